"""The lab sandbox: libvirt running inside a network namespace of our own.

Owned here: the ``orchlab`` network namespace, the virtlogd and libvirtd daemons started in it
(tracked by pid files under ``<state_dir>/lab/``), the isolated libvirt network ``orchlab`` and
the ``dir`` storage pool ``orchlab``; the environment ``orch lab exec`` gives its command.
Called by: cli.app, cli.labcmds (``orch lab up|down|status|exec``, the domain type ``auto``
picks; and the tests that need a real lab)

Why a namespace: on these machines traffic to private addresses is only allowed inside a
namespace the project made itself (README, *The lab*), so libvirtd (and the dnsmasq and qemu it
spawns) live in ``orchlab``; libvirt's unix socket is a file, so ``virsh`` works from anywhere.

libvirt is driven through the ``virsh`` CLI here, never the Python binding: the libvirt adapter
(``hypervisor/libvirt.py``) is the only module importing libvirt. XML is built with ElementTree.
"""

from __future__ import annotations

import errno
import grp
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import EnvironmentProblem
from orchestrator.labconfig import (  # re-exported: the lab's public face
    LAB_BRIDGE,
    LAB_GATEWAY,
    LAB_LIBVIRT_URI,
    LAB_NAMESPACE,
    LAB_NETWORK,
    LAB_POOL,
    LAB_PREFIX,
    LabStatus,
    detect_domain_type,
    lab_dir,
    lab_env,
    live_daemon_pid,
    network_mismatches,
    network_xml,
    pool_dir,
    pool_target_path,
    pool_xml,
    process_alive,
    read_pid_file,
    running_domains_on_lab,
)

__all__ = [
    "LAB_BRIDGE", "LAB_GATEWAY", "LAB_LIBVIRT_URI", "LAB_NAMESPACE", "LAB_NETWORK", "LAB_POOL",
    "LAB_PREFIX", "LabStatus", "detect_domain_type", "lab_dir", "lab_down", "lab_env",
    "lab_exec", "lab_status", "lab_up", "live_daemon_pid", "network_mismatches", "network_xml",
    "pool_dir", "pool_target_path", "pool_xml", "process_alive", "read_pid_file",
    "running_domains_on_lab",
]

LIBVIRT_SOCKET = Path("/run/libvirt/libvirt-sock")
VIRTLOGD_SOCKET = Path("/run/libvirt/virtlogd-sock")
# libvirt records the dnsmasq it spawned for a network here (used when libvirtd is gone).
_DNSMASQ_PIDFILE = Path(f"/run/libvirt/network/{LAB_NETWORK}.pid")
_NETNS_DIR = Path("/run/netns")

_REQUIRED_TOOLS = ("ip", "virsh", "libvirtd", "virtlogd", "dnsmasq", "qemu-system-x86_64")
_SBIN_FALLBACK = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_DAEMON_READY_SECONDS = 20.0
_DAEMON_STOP_SECONDS = 10.0
_COMMAND_TIMEOUT = 60.0

Progress = Callable[[str], None]


def _no_progress(_line: str) -> None:
    pass


# --- subprocess boundary ------------------------------------------------------------------------


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        # Non-login root shells and `sudo -E` may lack sbin on PATH; the daemons live there.
        found = shutil.which(name, path=os.pathsep.join(_SBIN_FALLBACK))
    if found is None:
        raise EnvironmentProblem(f"required tool {name!r} not found", hint="run `make setup`")
    return found


def _check_tools() -> None:
    missing = [
        t
        for t in _REQUIRED_TOOLS
        if shutil.which(t) is None and shutil.which(t, path=os.pathsep.join(_SBIN_FALLBACK)) is None
    ]
    if missing:
        raise EnvironmentProblem(
            f"tools missing for the lab: {', '.join(missing)}", hint="run `make setup`"
        )


def _require_root() -> None:
    if os.geteuid() != 0:
        raise EnvironmentProblem("orch lab needs root", hint="run it as root (sudo)")


def _run(
    argv: Sequence[str], *, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise EnvironmentProblem(
            f"{' '.join(argv)} did not finish in {_COMMAND_TIMEOUT:.0f} s"
        ) from exc
    except OSError as exc:
        raise EnvironmentProblem(f"cannot run {argv[0]}: {exc}", hint="run `make setup`") from exc
    if check and proc.returncode != 0:
        raise EnvironmentProblem(
            f"{' '.join(argv)} failed: {_last_line(proc.stderr or proc.stdout)}"
        )
    return proc


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def _virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run([_tool("virsh"), "-q", "-c", LAB_LIBVIRT_URI, *args], check=check)


def _in_netns(*argv: str) -> list[str]:
    return [_tool("ip"), "netns", "exec", LAB_NAMESPACE, *argv]


def _virsh_info(kind: str, name: str) -> dict[str, str] | None:
    """``net-info``/``pool-info`` as a dict, or None if the object is not defined."""
    proc = _virsh(f"{kind}-info", name, check=False)
    if proc.returncode != 0:
        return None
    info: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip().lower()] = value.strip()
    return info


# --- namespace ------------------------------------------------------------------------------------


def _netns_path() -> Path:
    return _NETNS_DIR / LAB_NAMESPACE


def _netns_exists() -> bool:
    return _netns_path().exists()


def _in_lab_netns(pid: int) -> bool:
    """Whether a process lives in the current ``orchlab`` namespace (what `ip netns identify` does)."""
    try:
        ours = _netns_path().stat()
        theirs = Path(f"/proc/{pid}/ns/net").stat()
    except OSError:
        return False
    return (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino)


def _ensure_netns(progress: Progress) -> None:
    ip = _tool("ip")
    # A name left behind without its namespace (e.g. /run not cleaned) cannot be entered.
    entered = (
        _netns_exists()
        and _run([ip, "netns", "exec", LAB_NAMESPACE, "true"], check=False).returncode == 0
    )
    if _netns_exists() and not entered:
        progress(f"removing unusable namespace {LAB_NAMESPACE}")
        _run([ip, "netns", "delete", LAB_NAMESPACE], check=False)
    if not _netns_exists():
        progress(f"creating network namespace {LAB_NAMESPACE}")
        _run([ip, "netns", "add", LAB_NAMESPACE])
    _run(_in_netns(ip, "link", "set", "lo", "up"))


def _netns_pids() -> list[int]:
    proc = _run([_tool("ip"), "netns", "pids", LAB_NAMESPACE], check=False)
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


# --- directories --------------------------------------------------------------------------------


def _ensure_dirs(state_dir: Path) -> None:
    """State dir, lab/ and pool/ must be traversable by libvirt-qemu, which opens the
    images and volumes under them."""
    try:
        for path in (state_dir, lab_dir(state_dir), pool_dir(state_dir)):
            path.mkdir(mode=0o711, parents=True, exist_ok=True)
            mode = path.stat().st_mode & 0o7777
            if mode & 0o011 != 0o011:
                path.chmod(mode | 0o011)
    except OSError as exc:
        raise EnvironmentProblem(
            f"cannot prepare lab directories under {state_dir}: {exc}"
        ) from exc


def _untraversable_parents(path: Path) -> list[str]:
    blocked: list[str] = []
    for parent in path.resolve().parents:
        try:
            if not parent.stat().st_mode & 0o001:
                blocked.append(str(parent))
        except OSError:
            continue
    return blocked


# --- daemons ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Daemon:
    name: str
    socket: Path

    def pid_file(self, state_dir: Path) -> Path:
        return lab_dir(state_dir) / f"{self.name}.pid"

    def log_file(self, state_dir: Path) -> Path:
        return lab_dir(state_dir) / f"{self.name}.log"


_VIRTLOGD = _Daemon("virtlogd", VIRTLOGD_SOCKET)
_LIBVIRTD = _Daemon("libvirtd", LIBVIRT_SOCKET)


def _socket_server_pid(path: Path) -> int | None:
    """Pid of the process serving a unix socket, or None if nobody answers (stale file)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(2.0)
        sock.connect(str(path))
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
            return None
        raise EnvironmentProblem(f"cannot probe {path}: {exc}") from exc
    finally:
        sock.close()
    pid, _uid, _gid = struct.unpack("3i", creds)
    return pid if pid > 0 else None


def _ensure_daemon(daemon: _Daemon, state_dir: Path, progress: Progress) -> int:
    pid_file = daemon.pid_file(state_dir)
    pid, _problem = live_daemon_pid(pid_file, comm=daemon.name)
    if pid is not None and not _in_lab_netns(pid):
        # Ours, but stranded in a namespace that was deleted and re-created: restart it.
        progress(f"{daemon.name} ({pid}) is not in namespace {LAB_NAMESPACE}; restarting it")
        _stop_pid(pid, comm=daemon.name)
        pid = None
    if pid is not None:
        return pid
    if pid_file.exists():
        progress(f"removing stale {daemon.name} pid file")
        pid_file.unlink(missing_ok=True)
    server = _socket_server_pid(daemon.socket)
    if server is not None:
        raise EnvironmentProblem(
            f"a {daemon.name} not started by `orch lab up` (pid {server}) serves {daemon.socket}",
            hint=f"stop it (kill {server}) and run `orch lab up` again",
        )
    progress(f"starting {daemon.name} in namespace {LAB_NAMESPACE}")
    env = dict(os.environ)
    # Daemonised, they lose stderr; keep warnings where `orch lab status` users can find them.
    env["LIBVIRT_LOG_OUTPUTS"] = f"3:file:{daemon.log_file(state_dir)}"
    _run(_in_netns(_tool(daemon.name), "-d", "-p", str(pid_file)), env=env)
    deadline = time.monotonic() + _DAEMON_READY_SECONDS
    while True:
        pid, _problem = live_daemon_pid(pid_file, comm=daemon.name)
        if pid is not None and _socket_server_pid(daemon.socket) is not None:
            return pid
        if time.monotonic() > deadline:
            raise EnvironmentProblem(
                f"{daemon.name} did not come up within {_DAEMON_READY_SECONDS:.0f} s",
                hint=f"see {daemon.log_file(state_dir)}",
            )
        time.sleep(0.1)


def _wait_libvirt_answers(state_dir: Path) -> None:
    # `virsh uri` is a full connect and round trip in ~20 ms; `virsh version` also asks the
    # qemu driver for the hypervisor version, measured at 3.5-4 s per call on this machine.
    deadline = time.monotonic() + _DAEMON_READY_SECONDS
    while _virsh("uri", check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise EnvironmentProblem(
                f"libvirtd does not answer on {LAB_LIBVIRT_URI}",
                hint=f"see {_LIBVIRTD.log_file(state_dir)}",
            )
        time.sleep(0.2)


def _stop_pid(pid: int, *, comm: str) -> None:
    """SIGTERM, wait with a deadline, then SIGKILL; only if the pid still is ``comm``."""
    for sig, wait in ((signal.SIGTERM, _DAEMON_STOP_SECONDS), (signal.SIGKILL, 5.0)):
        if not process_alive(pid, comm=comm):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while process_alive(pid, comm=comm):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
    if process_alive(pid, comm=comm):
        raise EnvironmentProblem(f"{comm} ({pid}) survived SIGKILL")


# --- network and pool --------------------------------------------------------------------------


def _define_from_xml(command: str, xml_text: str, state_dir: Path) -> None:
    with tempfile.NamedTemporaryFile(
        "w", suffix=".xml", dir=lab_dir(state_dir), delete=False
    ) as handle:
        handle.write(xml_text)
    try:
        _virsh(command, handle.name)
    finally:
        os.unlink(handle.name)


def _delete_stale_bridge() -> bool:
    ip = _tool("ip")
    if _run(_in_netns(ip, "link", "show", LAB_BRIDGE), check=False).returncode != 0:
        return False
    _run(_in_netns(ip, "link", "delete", LAB_BRIDGE))
    return True


def _ensure_network(state_dir: Path, progress: Progress) -> None:
    info = _virsh_info("net", LAB_NETWORK)
    if info is None:
        progress(f"defining network {LAB_NETWORK} (isolated, {LAB_GATEWAY}/{LAB_PREFIX})")
        _define_from_xml("net-define", network_xml(), state_dir)
        info = _virsh_info("net", LAB_NETWORK) or {}
    if info.get("active") != "yes":
        progress(f"starting network {LAB_NETWORK}")
        proc = _virsh("net-start", LAB_NETWORK, check=False)
        # libvirt says the network is inactive, so a bridge of that name is a leftover of a
        # killed libvirtd; it fails net-start with "already exists" or "already in use by
        # interface orchlab0" (route check), depending on what survived.
        if proc.returncode != 0 and _delete_stale_bridge():
            progress(f"removed bridge {LAB_BRIDGE} left behind; starting network again")
            proc = _virsh("net-start", LAB_NETWORK, check=False)
        if proc.returncode != 0:
            raise EnvironmentProblem(
                f"cannot start network {LAB_NETWORK}: {_last_line(proc.stderr)}"
            )
    if info.get("autostart") != "no":
        _virsh("net-autostart", LAB_NETWORK, "--disable")


def _ensure_pool(state_dir: Path, progress: Progress) -> None:
    want = pool_dir(state_dir).resolve()
    info = _virsh_info("pool", LAB_POOL)
    if info is None:
        progress(f"defining storage pool {LAB_POOL} at {want}")
        _define_from_xml("pool-define", pool_xml(want), state_dir)
        info = _virsh_info("pool", LAB_POOL) or {}
    else:
        have = pool_target_path(_virsh("pool-dumpxml", LAB_POOL).stdout)
        if have is None or Path(have).resolve() != want:
            raise EnvironmentProblem(
                f"storage pool {LAB_POOL} already exists with path {have}, not {want}",
                hint=f"use --state-dir {Path(have).parent.parent if have else '...'} or "
                f"`virsh pool-destroy {LAB_POOL}; virsh pool-undefine {LAB_POOL}` "
                "if nothing uses it",
            )
    if info.get("state") != "running":
        progress(f"starting storage pool {LAB_POOL}")
        _virsh("pool-build", LAB_POOL, check=False)  # a no-op error if the dir exists
        _virsh("pool-start", LAB_POOL)
    else:
        _virsh("pool-refresh", LAB_POOL)
    if info.get("autostart") != "no":
        _virsh("pool-autostart", LAB_POOL, "--disable")


# --- public verbs ---------------------------------------------------------------------------------


def lab_up(state_dir: Path, *, progress: Progress = _no_progress) -> LabStatus:
    """Bring the lab up, or finish bringing it up; fast and harmless when it already is."""
    _require_root()
    _check_tools()
    _ensure_netns(progress)
    _ensure_dirs(state_dir)
    _ensure_kvm_device_mode(progress)
    # virtlogd first: without its socket libvirtd cannot start domains ("virtlogd-sock").
    _ensure_daemon(_VIRTLOGD, state_dir, progress)
    _ensure_daemon(_LIBVIRTD, state_dir, progress)
    _wait_libvirt_answers(state_dir)
    _ensure_network(state_dir, progress)
    _ensure_pool(state_dir, progress)
    return lab_status(state_dir)


def _ensure_kvm_device_mode(progress: Progress, dev: Path = Path("/dev/kvm")) -> None:
    """Give /dev/kvm the owner and mode udev gives it on Debian (root:kvm 0660).

    Without udev it stays root:root 0600. libvirt probes QEMU's capabilities as root (KVM
    present) but then checks /dev/kvm as the qemu user (KVM unusable), judges its cache
    stale and probes again, forever: every define then waits minutes. Domains still run
    under TCG here (``detect_domain_type``); this only makes libvirt's view consistent.
    """
    try:
        st = dev.stat()
        kvm_gid = grp.getgrnam("kvm").gr_gid
    except (FileNotFoundError, KeyError):
        return
    if not stat.S_ISCHR(st.st_mode):
        return
    if st.st_gid != kvm_gid or stat.S_IMODE(st.st_mode) & 0o060 != 0o060:
        progress(f"setting {dev} to root:kvm 0660 (what udev does on Debian)")
        os.chown(dev, 0, kvm_gid)
        os.chmod(dev, stat.S_IMODE(st.st_mode) | 0o660)


def lab_down(state_dir: Path, *, progress: Progress = _no_progress) -> LabStatus:
    """Stop what ``lab_up`` started; definitions, volumes and DHCP reservations are kept."""
    _require_root()
    libvirtd, _ = live_daemon_pid(_LIBVIRTD.pid_file(state_dir), comm=_LIBVIRTD.name)
    virtlogd, _ = live_daemon_pid(_VIRTLOGD.pid_file(state_dir), comm=_VIRTLOGD.name)
    # Order matters: once libvirtd is gone virsh reaches nothing.
    if libvirtd is not None and _virsh("uri", check=False).returncode == 0:
        _power_off_lab_domains(progress)
        net = _virsh_info("net", LAB_NETWORK)
        if net is not None and net.get("active") == "yes":
            progress(f"stopping network {LAB_NETWORK}")
            _virsh("net-destroy", LAB_NETWORK)
        pool = _virsh_info("pool", LAB_POOL)
        if pool is not None and pool.get("state") == "running":
            progress(f"stopping storage pool {LAB_POOL}")
            _virsh("pool-destroy", LAB_POOL)
    else:
        _stop_orphan_dnsmasq(progress)
    for daemon, pid in ((_LIBVIRTD, libvirtd), (_VIRTLOGD, virtlogd)):
        if pid is not None:
            progress(f"stopping {daemon.name} ({pid})")
            _stop_pid(pid, comm=daemon.name)
        daemon.pid_file(state_dir).unlink(missing_ok=True)
    if _netns_exists():
        leftovers = _netns_pids()
        if leftovers:
            progress(
                f"keeping namespace {LAB_NAMESPACE}: processes still run in it "
                f"({', '.join(map(str, leftovers))})"
            )
        else:
            if _delete_stale_bridge():
                progress(f"removed bridge {LAB_BRIDGE}")
            progress(f"deleting network namespace {LAB_NAMESPACE}")
            _run([_tool("ip"), "netns", "delete", LAB_NAMESPACE])
    return lab_status(state_dir)


def _power_off_lab_domains(progress: Progress) -> None:
    names = [n for n in _virsh("list", "--name").stdout.split() if n]
    xmls = {n: _virsh("dumpxml", n, check=False).stdout for n in names}
    for name in running_domains_on_lab(xmls):
        progress(f"powering off {name}")
        proc = _virsh("destroy", name, check=False)
        # It may have stopped on its own between list and destroy; that is the goal anyway.
        if proc.returncode != 0 and "not running" not in proc.stderr:
            raise EnvironmentProblem(f"cannot power off {name}: {_last_line(proc.stderr)}")


def _stop_orphan_dnsmasq(progress: Progress) -> None:
    """libvirtd died without stopping the network: end the dnsmasq it left in our namespace."""
    pid = read_pid_file(_DNSMASQ_PIDFILE)
    if pid is not None and process_alive(pid, comm="dnsmasq") and _in_lab_netns(pid):
        progress(f"stopping dnsmasq ({pid}) left by libvirtd")
        _stop_pid(pid, comm="dnsmasq")


def lab_status(state_dir: Path) -> LabStatus:
    """Observe the lab without changing anything."""
    problems: list[str] = []
    namespace = _netns_exists()
    pids: dict[str, int | None] = {}
    for daemon in (_VIRTLOGD, _LIBVIRTD):
        pid, problem = live_daemon_pid(daemon.pid_file(state_dir), comm=daemon.name)
        if problem:
            problems.append(problem)
        if pid is not None and namespace and not _in_lab_netns(pid):
            problems.append(f"{daemon.name} ({pid}) runs outside namespace {LAB_NAMESPACE}")
        server = _socket_server_pid(daemon.socket) if pid is None else None
        if server is not None:
            problems.append(
                f"a {daemon.name} not started by `orch lab up` (pid {server}) serves {daemon.socket}"
            )
        pids[daemon.name] = pid
    network_active = pool_active = False
    pool_path: str | None = None
    if pids["libvirtd"] is not None:
        if _virsh("uri", check=False).returncode != 0:
            problems.append(f"libvirtd ({pids['libvirtd']}) does not answer on {LAB_LIBVIRT_URI}")
        else:
            net = _virsh_info("net", LAB_NETWORK)
            network_active = net is not None and net.get("active") == "yes"
            if net is None:
                problems.append(f"network {LAB_NETWORK} is not defined")
            else:
                problems.extend(network_mismatches(_virsh("net-dumpxml", LAB_NETWORK).stdout))
            pool = _virsh_info("pool", LAB_POOL)
            pool_active = pool is not None and pool.get("state") == "running"
            if pool is not None:
                pool_path = pool_target_path(_virsh("pool-dumpxml", LAB_POOL).stdout)
            else:
                problems.append(f"storage pool {LAB_POOL} is not defined")
    elif namespace and os.geteuid() == 0:
        ours = {pid for pid in pids.values() if pid is not None}
        leftovers = [pid for pid in _netns_pids() if pid not in ours]
        if leftovers:
            problems.append(
                f"processes run in namespace {LAB_NAMESPACE} without the lab's libvirtd: "
                f"{', '.join(map(str, leftovers))}"
            )
    if state_dir.exists():
        blocked = _untraversable_parents(pool_dir(state_dir))
        if blocked:
            problems.append(f"libvirt-qemu cannot traverse {', '.join(blocked)} (needs o+x)")
    return LabStatus(
        namespace=namespace,
        virtlogd_pid=pids["virtlogd"],
        libvirtd_pid=pids["libvirtd"],
        network_active=network_active,
        pool_active=pool_active,
        pool_path=pool_path,
        domain_type=detect_domain_type(),
        problems=tuple(problems),
    )


def lab_exec(state_dir: Path, argv: Sequence[str]) -> int:
    """Run ``argv`` inside the lab namespace with the lab as default; return its exit code."""
    if not argv:
        raise EnvironmentProblem("lab exec needs a command", hint="orch lab exec -- CMD")
    _require_root()
    libvirtd, _ = live_daemon_pid(_LIBVIRTD.pid_file(state_dir), comm=_LIBVIRTD.name)
    if not _netns_exists() or libvirtd is None:
        raise EnvironmentProblem("the lab is not up", hint="run `orch lab up`")
    env = dict(os.environ)
    env.update(lab_env(state_dir))
    try:
        # stdio inherited: CMD may be interactive (ssh) and its output is the user's.
        proc = subprocess.run(_in_netns(*argv), env=env, check=False)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot run ip netns exec: {exc}") from exc
    # A signal-killed child reports -N; shells report 128+N, which is what users expect.
    return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
