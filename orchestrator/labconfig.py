"""The lab's fixed settings and the pure parts of its logic: names, addresses, the network
and pool XML, pid-file and /proc checks, and the status record; the same for the lab's
simulated hosts (``HostPlan``: the address plan, their libvirtd.conf, their network XML, the
command that starts their daemons in namespaces of their own, the ``LabHost`` record).

Owned here: everything about the lab that needs no root, no subprocess and no daemon, so it
is unit-tested directly.
Called by: lab, labhosts, labsys (which act on the machine; and the tests)
"""

from __future__ import annotations

import ipaddress
import json
import shlex
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

# The simulated hosts (`orch lab up --hosts N`). Host N is libvirtd in network namespace
# orchlab-lab-N, at 10.214.0.N on a bridge of the lab's namespace (which is 10.214.0.254
# there), with a routed libvirt network 10.214.N.0/24 of its own.
# Each host costs ~30 MiB (libvirtd, virtlogd, dnsmasq) and little CPU once up; its guests
# are what is dear under TCG, and four hosts' worth fit the 2-core machines the lab runs on.
HOSTS_MAX = 4
HOSTS_BRIDGE = "orchhosts0"
HOSTS_BACKBONE = ipaddress.IPv4Network("10.214.0.0/24")
HOSTS_LAB_ADDRESS = "10.214.0.254"
HOST_IFACE = "eth0"  # the host's end of its veth pair, inside its namespace
HOSTS_RUN_DIR = Path("/run/orchlab")  # the hosts' /run/libvirt: gone at reboot, like /run
# What each host's mount namespace gets instead of the machine's libvirt directories.
HOST_LIBVIRT_DIRS = (
    ("etc", Path("/etc/libvirt")),
    ("lib", Path("/var/lib/libvirt")),
    ("cache", Path("/var/cache/libvirt")),
    ("log", Path("/var/log/libvirt")),
)
# Directories of a host's private copies, as Debian's libvirt-daemon-system lays them out
# (path under the host's dir, mode, owner); definitions (etc/qemu, etc/storage) start empty,
# so a host never loads the lab's or another host's domains, networks or pools.
HOST_SKELETON: tuple[tuple[str, int, str], ...] = (
    ("etc", 0o755, "root"),
    ("etc/qemu", 0o755, "root"),
    ("etc/qemu/networks", 0o755, "root"),
    ("etc/storage", 0o755, "root"),
    ("lib", 0o755, "root"),
    ("lib/dnsmasq", 0o755, "root"),
    ("lib/images", 0o711, "root"),
    ("lib/boot", 0o711, "root"),
    ("lib/qemu", 0o750, "libvirt-qemu"),
    ("lib/qemu/channel", 0o750, "libvirt-qemu"),
    ("lib/qemu/snapshot", 0o755, "libvirt-qemu"),
    ("lib/qemu/dump", 0o755, "libvirt-qemu"),
    ("lib/qemu/checkpoint", 0o755, "libvirt-qemu"),
    ("lib/qemu/nvram", 0o755, "libvirt-qemu"),
    ("lib/qemu/save", 0o755, "libvirt-qemu"),
    ("lib/qemu/ram", 0o755, "libvirt-qemu"),
    ("cache", 0o711, "root"),
    ("cache/qemu", 0o711, "root"),
    ("cache/qemu/capabilities", 0o755, "root"),
    ("log", 0o755, "root"),
    ("log/qemu", 0o755, "root"),
)
# Files of the machine's /etc/libvirt a host copies (the rest of its config is libvirt's
# defaults); libvirtd.conf is the host's own (``host_libvirtd_conf``).
HOST_ETC_COPIED = ("libvirt.conf", "qemu.conf", "virtlogd.conf", "nwfilter")


@dataclass(frozen=True)
class HostPlan:
    """Simulated host number ``index``: every name and address follows from the number."""

    index: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= HOSTS_MAX:
            raise ValueError(f"a lab host is numbered 1..{HOSTS_MAX}, not {self.index}")

    @property
    def name(self) -> str:
        """Also its hostname (its own UTS namespace)."""
        return f"lab-{self.index}"

    @property
    def fault_domain(self) -> str:
        return f"fd-{self.index}"

    @property
    def namespace(self) -> str:
        return f"orchlab-{self.name}"

    @property
    def veth(self) -> str:
        """The lab's end of the host's veth pair, on ``HOSTS_BRIDGE``."""
        return f"veth-{self.name}"

    @property
    def address(self) -> str:
        """The host's address on the lab's bridge; its libvirtd listens there."""
        return str(HOSTS_BACKBONE.network_address + self.index)

    @property
    def uri(self) -> str:
        return f"qemu+tcp://{self.address}/system"

    @property
    def network(self) -> str:
        return self.name

    @property
    def pool(self) -> str:
        return self.name

    @property
    def bridge(self) -> str:
        """The bridge of the host's libvirt network, inside the host's namespace."""
        return f"{self.name}-br"

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        """10.214.N.0/24: the N-th /24 after the backbone's."""
        base = HOSTS_BACKBONE.network_address + self.index * HOSTS_BACKBONE.num_addresses
        return ipaddress.IPv4Network(f"{base}/{HOSTS_BACKBONE.prefixlen}")

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def dhcp_range(self) -> tuple[str, str]:
        net = self.subnet.network_address
        return str(net + 10), str(net + 250)

    @property
    def host_uuid(self) -> str:
        """libvirt's host UUID for this host: fixed by its name, different for every host
        (they share the machine's SMBIOS, from which libvirt would take one UUID for all)."""
        return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{self.name}.orchlab.invalid"))

    def management_uri(self) -> str:
        """The host's libvirtd on its unix socket, reachable from any namespace: how the lab
        itself manages the host (the controller uses ``uri``)."""
        return f"qemu:///system?socket={host_run_dir(self) / 'libvirt-sock'}"


def host_plans(count: int) -> list[HostPlan]:
    if not 0 <= count <= HOSTS_MAX:
        raise ValueError(f"the lab has 0..{HOSTS_MAX} hosts, not {count}")
    return [HostPlan(i) for i in range(1, count + 1)]


@dataclass(frozen=True)
class LabHost:
    """A simulated host as observed: its plan, its daemons, and whether it answers over TCP
    from the lab's namespace (what the controller will use)."""

    plan: HostPlan
    namespace: bool
    virtlogd_pid: int | None
    libvirtd_pid: int | None
    answers: bool
    network_active: bool
    pool_active: bool
    route: bool
    problems: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def uri(self) -> str:
        return self.plan.uri

    @property
    def fault_domain(self) -> str:
        return self.plan.fault_domain

    @property
    def network(self) -> str:
        return self.plan.network

    @property
    def pool(self) -> str:
        return self.plan.pool

    @property
    def up(self) -> bool:
        return (
            self.namespace
            and self.virtlogd_pid is not None
            and self.libvirtd_pid is not None
            and self.answers
            and self.network_active
            and self.pool_active
            and self.route
            and not self.problems
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "uri": self.uri,
            "faultDomain": self.fault_domain,
            "network": self.network,
            "pool": self.pool,
            "answers": self.answers,
            "up": self.up,
            "address": self.plan.address,
            "subnet": str(self.plan.subnet),
            "namespace": self.plan.namespace if self.namespace else None,
            "virtlogdPid": self.virtlogd_pid,
            "libvirtdPid": self.libvirtd_pid,
            "networkActive": self.network_active,
            "poolActive": self.pool_active,
            "route": self.route,
            "problems": list(self.problems),
        }


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
    hosts: tuple[LabHost, ...] = ()

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
            and all(host.up for host in self.hosts)
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
            "hosts": [host.as_dict() for host in self.hosts],
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


# --- the simulated hosts: pure parts -------------------------------------------------------------


def hosts_dir(state_dir: Path) -> Path:
    return lab_dir(state_dir) / "hosts"


def hosts_count_file(state_dir: Path) -> Path:
    """How many hosts the lab was last asked for (``lab up --hosts N``); none without it."""
    return hosts_dir(state_dir) / "count"


def parse_hosts_count(text: str) -> int | None:
    """The count a hosts count file holds, or None if it holds none that is valid."""
    text = text.strip()
    if not text.isdigit() or not 0 <= int(text) <= HOSTS_MAX:
        return None
    return int(text)


def host_dir(state_dir: Path, plan: HostPlan) -> Path:
    """A host's lasting state: its /etc/libvirt, /var/lib/libvirt, /var/cache/libvirt,
    /var/log/libvirt, its pool, its daemons' pid files and logs (kept by ``lab down``)."""
    return hosts_dir(state_dir) / plan.name


def host_pool_dir(state_dir: Path, plan: HostPlan) -> Path:
    return host_dir(state_dir, plan) / "pool"


def host_run_dir(plan: HostPlan) -> Path:
    """A host's /run/libvirt. On /run, not in the state dir: like the machine's, it must not
    outlive a reboot (it holds the state of running networks and domains), but it must
    outlive the host's daemons, so that a restarted libvirtd finds its guests again."""
    return HOSTS_RUN_DIR / plan.name


def host_binds(state_dir: Path, plan: HostPlan) -> list[tuple[Path, Path]]:
    """(private copy, libvirt directory it hides) for the host's mount namespace."""
    base = host_dir(state_dir, plan)
    binds = [(base / sub, target) for sub, target in HOST_LIBVIRT_DIRS]
    binds.insert(1, (host_run_dir(plan), Path("/run/libvirt")))
    return binds


def host_libvirtd_conf(plan: HostPlan) -> str:
    """The host's libvirtd.conf: TCP without authentication on its lab address only.

    For the lab only: a read-write libvirt connection is root on that host. The address is
    on a bridge inside the lab's namespaces, which nothing outside them reaches. A real host
    is reached over ``qemu+ssh://`` (keys) or ``qemu+tls://`` (x509) instead."""
    return (
        f"# {plan.name}, a simulated host of the orchestrator's lab (`orch lab up --hosts N`)\n"
        "listen_tls = 0\n"
        "listen_tcp = 1\n"
        f'listen_addr = "{plan.address}"\n'
        'auth_tcp = "none"\n'
        f'host_uuid = "{plan.host_uuid}"\n'
    )


def host_network_xml(plan: HostPlan) -> str:
    """The host's network: routed (``<forward mode='route'/>``, no NAT) on its own /24 with
    its own dnsmasq, so that the lab's namespace reaches guests through a route via the host."""
    net = ET.Element("network")
    ET.SubElement(net, "name").text = plan.network
    ET.SubElement(net, "forward", {"mode": "route"})
    ET.SubElement(net, "bridge", {"name": plan.bridge, "stp": "on", "delay": "0"})
    ip = ET.SubElement(net, "ip", {"address": plan.gateway, "netmask": str(plan.subnet.netmask)})
    start, end = plan.dhcp_range
    ET.SubElement(ET.SubElement(ip, "dhcp"), "range", {"start": start, "end": end})
    return ET.tostring(net, encoding="unicode")


def host_network_mismatches(xml_text: str, plan: HostPlan) -> list[str]:
    """How an existing definition of the host's network differs from ours in what the lab
    relies on (routed, its bridge, its gateway); DHCP hosts are the controller's."""
    name = plan.network
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        return [f"network {name} of {plan.name} XML does not parse: {exc}"]
    found: list[str] = []
    forward = root.find("forward")
    if forward is None or forward.get("mode") != "route":
        found.append(f"network {name} of {plan.name} is not routed (<forward mode='route'/>)")
    bridge = root.find("bridge")
    if bridge is None or bridge.get("name") != plan.bridge:
        found.append(f"network {name} of {plan.name} does not use bridge {plan.bridge}")
    if plan.gateway not in [ip.get("address") for ip in root.findall("ip")]:
        found.append(f"network {name} of {plan.name} does not have address {plan.gateway}")
    return found


def host_daemon_argv(
    *, unshare: str, sh: str, binds: Sequence[tuple[Path, Path]], hostname: str,
    argv: Sequence[str],
) -> list[str]:
    """``argv`` (a daemon) in a new mount and UTS namespace with the host's private copies
    bound over the machine's libvirt directories and its hostname set.

    Moving libvirt's sockets alone would not do: the qemu and network drivers' state paths
    are compiled in, so a second daemon would load (and re-attach to) the lab's domains and
    networks. Propagation is ``slave``: what is bound here stays here, while mounts removed
    outside (a host namespace deleted by ``ip netns delete``) are removed here too, so no host
    keeps another's network namespace alive."""
    script = "set -e; " + "; ".join(
        [f"mount --bind {shlex.quote(str(src))} {shlex.quote(str(dst))}" for src, dst in binds]
        + [f"hostname {shlex.quote(hostname)}", 'exec "$@"']
    )
    return [unshare, "--mount", "--uts", "--propagation", "slave", "--",
            sh, "-c", script, "sh", *argv]


@dataclass(frozen=True)
class IpLink:
    """What ``ip -j link`` says of a link that the lab checks."""

    name: str
    ifindex: int
    up: bool
    master: str | None
    peer_ifindex: int | None  # a veth's peer, when it is in another namespace


def ip_links(json_text: str) -> dict[str, IpLink]:
    """``ip -j link show`` output → links by name."""
    links: dict[str, IpLink] = {}
    for item in _json_list(json_text):
        name = item.get("ifname")
        if not isinstance(name, str):
            continue
        flags = item.get("flags") or []
        peer = item.get("link_index")
        links[name] = IpLink(
            name=name,
            ifindex=int(item.get("ifindex", 0)),
            up="UP" in flags,
            master=item.get("master"),
            peer_ifindex=int(peer) if isinstance(peer, int) else None,
        )
    return links


def ip_addresses(json_text: str) -> dict[str, set[str]]:
    """``ip -j addr show`` output → IPv4 ``address/prefix`` of each link by name."""
    found: dict[str, set[str]] = {}
    for item in _json_list(json_text):
        name = item.get("ifname")
        if isinstance(name, str):
            found[name] = {
                f"{a.get('local')}/{a.get('prefixlen')}"
                for a in item.get("addr_info") or []
                if a.get("family") == "inet"
            }
    return found


def route_gateways(json_text: str) -> dict[str, str]:
    """``ip -j route show`` output → gateway of each destination that has one."""
    found: dict[str, str] = {}
    for item in _json_list(json_text):
        dst, gateway = item.get("dst"), item.get("gateway")
        if isinstance(dst, str) and isinstance(gateway, str):
            found[dst] = gateway
    return found


def _json_list(text: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text or "[]")
    except json.JSONDecodeError:
        return []
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []
