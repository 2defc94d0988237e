"""The lab's fixed settings and the pure parts of its logic: names, addresses, the network
and pool XML, pid-file and /proc checks, and the status record.

Owned here: everything about the lab that needs no root, no subprocess and no daemon, so it
is unit-tested directly.
Called by: lab, labsys (which act on the machine; and the tests)
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import EnvironmentProblem

LAB_NAMESPACE = "orchlab"
LAB_NETWORK = "orchlab"
LAB_POOL = "orchlab"
LAB_BRIDGE = "orchlab0"
LAB_GATEWAY = "10.213.0.1"
LAB_NETMASK = "255.255.255.0"
LAB_PREFIX = 24
LAB_DHCP_START = "10.213.0.10"
LAB_DHCP_END = "10.213.0.250"
LAB_LIBVIRT_URI = "qemu:///system"


@dataclass(frozen=True)
class LabStatus:
    namespace: bool
    virtlogd_pid: int | None
    libvirtd_pid: int | None
    network_active: bool
    pool_active: bool
    pool_path: str | None
    domain_type: str
    problems: tuple[str, ...]

    @property
    def up(self) -> bool:
        """Everything ``lab_up`` provides is running and nothing looks wrong."""
        return (
            self.namespace
            and self.virtlogd_pid is not None
            and self.libvirtd_pid is not None
            and self.network_active
            and self.pool_active
            and not self.problems
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "up": self.up,
            "namespace": LAB_NAMESPACE if self.namespace else None,
            "virtlogdPid": self.virtlogd_pid,
            "libvirtdPid": self.libvirtd_pid,
            "network": LAB_NETWORK,
            "networkActive": self.network_active,
            "pool": LAB_POOL,
            "poolActive": self.pool_active,
            "poolPath": self.pool_path,
            "domainType": self.domain_type,
            "problems": list(self.problems),
        }


# --- pure parts -------------------------------------------------------------------------------


def detect_domain_type(sys_root: Path = Path("/sys")) -> str:
    """``kvm`` only with a real KVM host module (``kvm_intel``/``kvm_amd``): under others,
    such as ``kvm_pvm``, stock Debian guest kernels hang in early boot."""
    module = sys_root / "module"
    if (module / "kvm_intel").exists() or (module / "kvm_amd").exists():
        return "kvm"
    return "qemu"


def network_xml() -> str:
    """The lab network: isolated (no ``<forward>``), so guests reach only each other and us."""
    net = ET.Element("network")
    ET.SubElement(net, "name").text = LAB_NETWORK
    ET.SubElement(net, "bridge", {"name": LAB_BRIDGE, "stp": "on", "delay": "0"})
    ip = ET.SubElement(net, "ip", {"address": LAB_GATEWAY, "netmask": LAB_NETMASK})
    dhcp = ET.SubElement(ip, "dhcp")
    ET.SubElement(dhcp, "range", {"start": LAB_DHCP_START, "end": LAB_DHCP_END})
    return ET.tostring(net, encoding="unicode")


def pool_xml(pool_path: Path, *, name: str = LAB_POOL) -> str:
    """A ``dir`` pool; mode 0711 so libvirt-qemu can reach volumes it was given."""
    pool = ET.Element("pool", {"type": "dir"})
    ET.SubElement(pool, "name").text = name
    target = ET.SubElement(pool, "target")
    ET.SubElement(target, "path").text = str(pool_path)
    perms = ET.SubElement(target, "permissions")
    ET.SubElement(perms, "mode").text = "0711"
    return ET.tostring(pool, encoding="unicode")


def lab_dir(state_dir: Path) -> Path:
    return state_dir / "lab"


def pool_dir(state_dir: Path) -> Path:
    return lab_dir(state_dir) / "pool"


def lab_env(state_dir: Path) -> dict[str, str]:
    """What ``orch lab exec`` adds to the environment: the lab becomes the default."""
    return {
        "ORCH_LIBVIRT_URI": LAB_LIBVIRT_URI,
        "ORCH_NETWORK": LAB_NETWORK,
        "ORCH_POOL": LAB_POOL,
        "ORCH_DOMAIN_TYPE": detect_domain_type(),
        "ORCH_STATE_DIR": str(state_dir),
        "ORCH_IN_LAB": "1",
    }


def process_alive(pid: int, *, comm: str, proc_root: Path = Path("/proc")) -> bool:
    """True if ``pid`` runs (not a zombie) and its command name is ``comm``.

    The name check guards against pid reuse: a pid file outliving its daemon may name an
    unrelated process by now.
    """
    base = proc_root / str(pid)
    try:
        if (base / "comm").read_text().strip() != comm:
            return False
        stat = (base / "stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name, which may itself hold ")".
    state = stat[stat.rfind(")") + 1 :].split()
    return bool(state) and state[0] not in ("Z", "X")


def read_pid_file(path: Path) -> int | None:
    """The pid a pid file names, or None if the file is missing or not a pid."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EnvironmentProblem(f"cannot read pid file {path}: {exc}") from exc
    return int(text) if text.isdigit() and int(text) > 0 else None


def live_daemon_pid(
    pid_file: Path, *, comm: str, proc_root: Path = Path("/proc")
) -> tuple[int | None, str | None]:
    """(pid of the live daemon the pid file names, or None; a problem sentence, or None)."""
    pid = read_pid_file(pid_file)
    if pid is None:
        if pid_file.exists():
            return None, f"{comm} pid file {pid_file} does not hold a pid"
        return None, None
    if process_alive(pid, comm=comm, proc_root=proc_root):
        return pid, None
    return None, f"{comm} pid file names a dead process ({pid})"


def network_mismatches(xml_text: str) -> list[str]:
    """How an existing ``orchlab`` definition differs from ours in what the lab relies on.

    DHCP hosts are deliberately not compared: the controller adds reservations there.
    """
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        return [f"network {LAB_NETWORK} XML does not parse: {exc}"]
    found: list[str] = []
    if root.find("forward") is not None:
        found.append(f"network {LAB_NETWORK} has a <forward> (the lab network must be isolated)")
    bridge = root.find("bridge")
    if bridge is None or bridge.get("name") != LAB_BRIDGE:
        found.append(f"network {LAB_NETWORK} does not use bridge {LAB_BRIDGE}")
    addresses = [ip.get("address") for ip in root.findall("ip")]
    if LAB_GATEWAY not in addresses:
        found.append(f"network {LAB_NETWORK} does not have address {LAB_GATEWAY}")
    return found


def pool_target_path(xml_text: str) -> str | None:
    try:
        return ET.fromstring(xml_text).findtext("target/path")
    except ET.ParseError:
        return None


def running_domains_on_lab(domain_xmls: dict[str, str]) -> list[str]:
    """Names of domains (name → live XML) with an interface on the lab network or bridge."""
    names: list[str] = []
    for name, text in domain_xmls.items():
        try:
            root = ET.fromstring(text)
        except ET.ParseError:
            continue
        for source in root.findall("devices/interface/source"):
            if source.get("network") == LAB_NETWORK or source.get("bridge") == LAB_BRIDGE:
                names.append(name)
                break
    return names
