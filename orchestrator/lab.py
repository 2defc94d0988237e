"""The lab sandbox: libvirt running inside a network namespace of our own.

Owned here: where the one lab of this machine lives (``lab_home``: every state dir finds the
same lab), the ``orchlab`` network namespace, the virtlogd and libvirtd daemons started in it
(tracked by pid files under ``<lab home>/lab/``), the isolated libvirt network ``orchlab`` and
the ``dir`` storage pool ``orchlab``; the environment ``orch lab exec`` gives its command; the
verbs over the whole lab, its simulated hosts (``labhosts``) included.
Called by: cli.app, cli.labcmds (``orch lab up|down|status|hosts|exec``, the domain type
``auto`` picks; and the tests that need a real lab)

Why a namespace: on these machines traffic to private addresses is only allowed inside a
namespace the project made itself (README, *The lab*), so libvirtd (and the dnsmasq and qemu it
spawns) live in ``orchlab``; libvirt's unix socket is a file, so ``virsh`` works from anywhere.

libvirt is driven through the ``virsh`` CLI (``labsys.Virsh``), never the Python binding: the
libvirt adapter (``hypervisor/libvirt.py``) is the only module importing libvirt. XML is built
with ElementTree.
"""

from __future__ import annotations

import grp
import os
import stat
import subprocess
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from orchestrator import labhosts
from orchestrator.errors import EnvironmentProblem
from orchestrator.labconfig import (  # re-exported: the lab's public face
    HOSTS_MAX,
    LAB_BRIDGE,
    LAB_GATEWAY,
    LAB_LIBVIRT_URI,
    LAB_NAMESPACE,
    LAB_NETWORK,
    LAB_POOL,
    LAB_PREFIX,
    HostPlan,
    LabHost,
    LabStatus,
    detect_domain_type,
    host_plans,
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
from orchestrator.labsys import (
    Daemon,
    Progress,
    Virsh,
    check_tools,
    daemon_pid,
    delete_link,
    delete_netns_if_empty,
    ensure_daemon,
    ensure_netns,
    ensure_traversable_dirs,
    in_netns,
    netns_exists,
    netns_path,
    netns_pids,
    no_progress,
    pid_in_netns,
    require_root,
    socket_server_pid,
    stop_daemon,
    stop_pid,
    tool,
    untraversable_parents,
)

__all__ = [
    "HOSTS_MAX", "LAB_BRIDGE", "LAB_GATEWAY", "LAB_LIBVIRT_URI", "LAB_NAMESPACE", "LAB_NETWORK",
    "LAB_POOL", "LAB_PREFIX", "HostPlan", "LabHost", "LabStatus", "detect_domain_type",
    "host_plans", "lab_dir", "lab_down", "lab_env", "lab_exec", "lab_hosts", "lab_status",
    "lab_up", "live_daemon_pid", "network_mismatches", "network_xml", "pool_dir",
    "pool_target_path", "pool_xml", "process_alive", "read_pid_file", "running_domains_on_lab",
]

LIBVIRT_SOCKET = Path("/run/libvirt/libvirt-sock")
VIRTLOGD_SOCKET = Path("/run/libvirt/virtlogd-sock")
# libvirt records the dnsmasq it spawned for a network here (used when libvirtd is gone).
_DNSMASQ_PIDFILE = Path(f"/run/libvirt/network/{LAB_NETWORK}.pid")

_REQUIRED_TOOLS = ("ip", "virsh", "libvirtd", "virtlogd", "dnsmasq", "qemu-system-x86_64",
                   "nsenter")


def _daemon(name: str, sock: Path, state_dir: Path) -> Daemon:
    return Daemon(name, sock, lab_dir(state_dir) / f"{name}.pid",
                  lab_dir(state_dir) / f"{name}.log", LAB_NAMESPACE)


def _virtlogd(state_dir: Path) -> Daemon:
    return _daemon("virtlogd", VIRTLOGD_SOCKET, state_dir)


def _libvirtd(state_dir: Path) -> Daemon:
    return _daemon("libvirtd", LIBVIRT_SOCKET, state_dir)


def _virsh(state_dir: Path) -> Virsh:
    return Virsh(LAB_LIBVIRT_URI, scratch=lab_dir(state_dir))


def _start_argv(daemon: Daemon) -> list[str]:
    return in_netns(LAB_NAMESPACE, tool(daemon.name), "-d", "-p", str(daemon.pid_file))


# --- public verbs ---------------------------------------------------------------------------------


def lab_up(
    state_dir: Path, *, hosts: int | None = None, progress: Progress = no_progress
) -> LabStatus:
    """Bring the lab up, or finish bringing it up; fast and harmless when it already is.

    ``hosts``: how many simulated hosts (``labhosts``) the lab has from now on, 0 for the
    single-host lab; None keeps as many as it was last given (none at first, and after
    ``lab_down``)."""
    if hosts is not None and not 0 <= hosts <= HOSTS_MAX:
        raise ValueError(f"the lab has 0..{HOSTS_MAX} hosts, not {hosts}")
    require_root()
    check_tools(_REQUIRED_TOOLS)
    ensure_netns(LAB_NAMESPACE, progress)
    ensure_traversable_dirs([state_dir, lab_dir(state_dir), pool_dir(state_dir)])
    _ensure_kvm_device_mode(progress)
    # virtlogd first: without its socket libvirtd cannot start domains ("virtlogd-sock").
    for daemon in (_virtlogd(state_dir), _libvirtd(state_dir)):
        ensure_daemon(daemon, partial(_start_argv, daemon), progress)
    virsh = _virsh(state_dir)
    virsh.wait_answers(_libvirtd(state_dir).log_file)
    virsh.ensure_network(
        LAB_NETWORK, network_xml(), bridge=LAB_BRIDGE, bridge_namespace=LAB_NAMESPACE,
        what=f"isolated, {LAB_GATEWAY}/{LAB_PREFIX}", progress=progress)
    virsh.ensure_pool(LAB_POOL, pool_dir(state_dir), progress)
    labhosts.ensure_hosts(state_dir, hosts, progress)
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


def lab_down(state_dir: Path, *, progress: Progress = no_progress) -> LabStatus:
    """Stop what ``lab_up`` started, simulated hosts included; definitions, volumes and DHCP
    reservations are kept (the hosts' in their state dirs)."""
    require_root()
    # The hosts first: their veths are in the lab's namespace.
    labhosts.remove_hosts(state_dir, progress)
    virtlogd, libvirtd = _virtlogd(state_dir), _libvirtd(state_dir)
    virsh = _virsh(state_dir)
    # Order matters: once libvirtd is gone virsh reaches nothing.
    if daemon_pid(libvirtd) is not None and virsh.answers():
        _power_off_lab_domains(virsh, progress)
        net = virsh.info("net", LAB_NETWORK)
        if net is not None and net.get("active") == "yes":
            progress(f"stopping network {LAB_NETWORK}")
            virsh("net-destroy", LAB_NETWORK)
        pool = virsh.info("pool", LAB_POOL)
        if pool is not None and pool.get("state") == "running":
            progress(f"stopping storage pool {LAB_POOL}")
            virsh("pool-destroy", LAB_POOL)
    else:
        _stop_orphan_dnsmasq(progress)
    stop_daemon(libvirtd, progress)
    stop_daemon(virtlogd, progress)
    if (netns_exists(LAB_NAMESPACE) and not netns_pids(LAB_NAMESPACE)
            and delete_link(LAB_NAMESPACE, LAB_BRIDGE)):
        progress(f"removed bridge {LAB_BRIDGE}")
    delete_netns_if_empty(LAB_NAMESPACE, progress)
    return lab_status(state_dir)


def _power_off_lab_domains(virsh: Virsh, progress: Progress) -> None:
    names = [n for n in virsh("list", "--name").stdout.split() if n]
    xmls = {n: virsh("dumpxml", n, check=False).stdout for n in names}
    for name in running_domains_on_lab(xmls):
        progress(f"powering off {name}")
        proc = virsh("destroy", name, check=False)
        # It may have stopped on its own between list and destroy; that is the goal anyway.
        if proc.returncode != 0 and "not running" not in proc.stderr:
            raise EnvironmentProblem(f"cannot power off {name}: {proc.stderr.strip()}")


def _stop_orphan_dnsmasq(progress: Progress) -> None:
    """libvirtd died without stopping the network: end the dnsmasq it left in our namespace."""
    pid = read_pid_file(_DNSMASQ_PIDFILE)
    if pid is not None and process_alive(pid, comm="dnsmasq") and pid_in_netns(LAB_NAMESPACE, pid):
        progress(f"stopping dnsmasq ({pid}) left by libvirtd")
        stop_pid(pid, comm="dnsmasq")


def lab_status(state_dir: Path) -> LabStatus:
    """Observe the lab, its simulated hosts included, without changing anything."""
    problems: list[str] = []
    namespace = netns_exists(LAB_NAMESPACE)
    pids: dict[str, int | None] = {}
    for daemon in (_virtlogd(state_dir), _libvirtd(state_dir)):
        pid, problem = live_daemon_pid(daemon.pid_file, comm=daemon.name)
        if problem:
            problems.append(problem)
        if pid is not None and namespace and not pid_in_netns(LAB_NAMESPACE, pid):
            problems.append(f"{daemon.name} ({pid}) runs outside namespace {LAB_NAMESPACE}")
        server = socket_server_pid(daemon.socket) if pid is None else None
        if server is not None:
            problems.append(
                f"a {daemon.name} not started by `orch lab up` (pid {server}) serves {daemon.socket}"
            )
        pids[daemon.name] = pid
    network_active = pool_active = False
    pool_path: str | None = None
    if pids["libvirtd"] is not None:
        virsh = _virsh(state_dir)
        if not virsh.answers():
            problems.append(f"libvirtd ({pids['libvirtd']}) does not answer on {LAB_LIBVIRT_URI}")
        else:
            net = virsh.info("net", LAB_NETWORK)
            network_active = net is not None and net.get("active") == "yes"
            if net is None:
                problems.append(f"network {LAB_NETWORK} is not defined")
            else:
                problems.extend(network_mismatches(virsh("net-dumpxml", LAB_NETWORK).stdout))
            pool = virsh.info("pool", LAB_POOL)
            pool_active = pool is not None and pool.get("state") == "running"
            if pool is not None:
                pool_path = virsh.pool_path(LAB_POOL)
            else:
                problems.append(f"storage pool {LAB_POOL} is not defined")
    elif namespace and os.geteuid() == 0:
        ours = {pid for pid in pids.values() if pid is not None}
        leftovers = [pid for pid in netns_pids(LAB_NAMESPACE) if pid not in ours]
        if leftovers:
            problems.append(
                f"processes run in namespace {LAB_NAMESPACE} without the lab's libvirtd: "
                f"{', '.join(map(str, leftovers))}"
            )
    if state_dir.exists():
        blocked = untraversable_parents(pool_dir(state_dir))
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
        hosts=labhosts.hosts_status(state_dir),
    )


def lab_hosts(state_dir: Path) -> list[LabHost]:
    """The lab's simulated hosts as they are now: for each its name, ``uri``
    (``qemu+tcp://`` from the lab's namespace), fault domain, network, pool, and whether its
    libvirtd answers there (``answers``; ``up``: everything of it is). Empty for the
    single-host lab. Changes nothing."""
    return list(labhosts.hosts_status(state_dir))


def lab_home() -> Path:
    """Where the lab keeps its daemons' pid files and logs, its pool and its hosts: one
    place per machine (the namespace, the bridge and the addresses are one per machine too),
    ``ORCH_LAB_HOME`` or /var/lib/orchestrator, whatever state dir a command uses."""
    return Path(os.environ.get("ORCH_LAB_HOME", "/var/lib/orchestrator"))


def lab_exec(state_dir: Path, argv: Sequence[str], *, home: Path | None = None) -> int:
    """Run ``argv`` inside the lab namespace with the lab as default and ``state_dir`` as
    the state dir; return its exit code. ``home``: the lab's (``lab_home``), by default
    ``state_dir``.

    Only the network namespace is entered (``nsenter --net``), not a mount namespace of its
    own as ``ip netns exec`` would make: so what the command mounts, such as the namespaces
    of ``lab_up(hosts=N)`` run by a test inside the lab, is seen by every other process."""
    if not argv:
        raise EnvironmentProblem("lab exec needs a command", hint="orch lab exec -- CMD")
    require_root()
    libvirtd = daemon_pid(_libvirtd(state_dir if home is None else home))
    if not netns_exists(LAB_NAMESPACE) or libvirtd is None:
        raise EnvironmentProblem("the lab is not up", hint="run `orch lab up`")
    env = dict(os.environ)
    env.update(lab_env(state_dir))
    nsenter = [tool("nsenter"), f"--net={netns_path(LAB_NAMESPACE)}", "--", *argv]
    try:
        # stdio inherited: CMD may be interactive (ssh) and its output is the user's.
        proc = subprocess.run(nsenter, env=env, check=False)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot run nsenter: {exc}") from exc
    # A signal-killed child reports -N; shells report 128+N, which is what users expect.
    return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
