"""The lab's simulated libvirt hosts (``orch lab up --hosts N``): N libvirtd on this machine,
each as if it were a hypervisor of its own, reached by the controller over ``qemu+tcp://``.

Owned here: for host ``lab-N`` (names and addresses in ``labconfig.HostPlan``) its network
namespace ``orchlab-lab-N``, the veth pair joining it to bridge ``orchhosts0`` of the lab's
namespace, the route of the lab's namespace to its subnet, its virtlogd and libvirtd (each
started in a mount and UTS namespace of its own: private /etc/libvirt, /run/libvirt,
/var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt, hostname ``lab-N``), its routed
libvirt network and its ``dir`` pool; how many hosts the lab was asked for
(``<state-dir>/lab/hosts/count``); and removing all of it, leftovers of killed sessions
included.
Called by: lab (``lab_up``, ``lab_down``, ``lab_status``, ``lab_hosts``)

Why routes and no agent: the controller runs in the lab's namespace and probes and SSHes into
instances by their addresses. Each host's network is routed (no NAT) on a /24 of its own, and
the lab's namespace has a route to each /24 via that host's address on the bridge, so those
addresses are reachable from the controller as they are on one host: no agent on the hosts,
no SSH jump.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
from functools import partial
from pathlib import Path

from orchestrator.errors import EnvironmentProblem
from orchestrator.labconfig import (
    HOST_ETC_COPIED,
    HOST_IFACE,
    HOST_SKELETON,
    HOSTS_BACKBONE,
    HOSTS_BRIDGE,
    HOSTS_LAB_ADDRESS,
    HOSTS_MAX,
    LAB_NAMESPACE,
    HostPlan,
    IpLink,
    LabHost,
    host_binds,
    host_daemon_argv,
    host_dir,
    host_libvirtd_conf,
    host_network_mismatches,
    host_network_xml,
    host_plans,
    host_pool_dir,
    host_run_dir,
    hosts_count_file,
    hosts_dir,
    ip_addresses,
    ip_links,
    lab_dir,
    live_daemon_pid,
    parse_hosts_count,
    process_alive,
    read_pid_file,
    route_gateways,
)
from orchestrator.labsys import (
    Daemon,
    Progress,
    Virsh,
    daemon_pid,
    delete_link,
    delete_netns_if_empty,
    ensure_daemon,
    ensure_netns,
    ensure_traversable_dirs,
    in_netns,
    ip_in,
    netns_exists,
    pid_in_netns,
    stop_daemon,
    stop_pid,
    tool,
)

HOST_TOOLS = ("unshare", "mount", "hostname", "sh")
_MACHINE_ETC = Path("/etc/libvirt")
# libvirt's cache of what the machine's qemu can do: keyed to the qemu binary, the kernel and
# the CPU, which every host shares. Probing it anew takes 7-8 s of a host's first call on this
# 2-core machine; a host whose cache is empty starts from a copy of the lab's (libvirt
# re-probes if it no longer matches).
_MACHINE_QEMU_CAPS = Path("/var/cache/libvirt/qemu/capabilities")
_HOST_QEMU_CAPS = "cache/qemu/capabilities"
_QEMU_COMM = "qemu-system-x86"  # /proc/PID/comm keeps 15 characters of qemu-system-x86_64


# --- what the lab was asked for -------------------------------------------------------------------


def wanted_count(state_dir: Path) -> int:
    """Hosts the lab was last asked for; 0 (the single-host lab) if never or after down."""
    try:
        text = hosts_count_file(state_dir).read_text()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise EnvironmentProblem(f"cannot read {hosts_count_file(state_dir)}: {exc}") from exc
    return parse_hosts_count(text) or 0


def _record_count(state_dir: Path, count: int) -> None:
    path = hosts_count_file(state_dir)
    if count == 0:
        path.unlink(missing_ok=True)
    elif wanted_count(state_dir) != count:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{count}\n")


# --- observing the lab's namespace -----------------------------------------------------------------


class _LabView:
    """Links, addresses and routes of the lab's namespace, read once per verb."""

    def __init__(self) -> None:
        if not netns_exists(LAB_NAMESPACE) or os.geteuid() != 0:
            self.links: dict[str, IpLink] = {}
            self.addresses: dict[str, set[str]] = {}
            self.routes: dict[str, str] = {}
            return
        addr = ip_in(LAB_NAMESPACE, "-j", "addr", "show", check=False).stdout
        self.links = ip_links(addr)
        self.addresses = ip_addresses(addr)
        self.routes = route_gateways(ip_in(LAB_NAMESPACE, "-j", "route", "show",
                                           check=False).stdout)

    def has_route(self, plan: HostPlan) -> bool:
        return self.routes.get(str(plan.subnet)) == plan.address


def _daemons(state_dir: Path, plan: HostPlan) -> tuple[Daemon, Daemon]:
    """(virtlogd, libvirtd) of a host; virtlogd first: libvirtd needs its socket to start
    domains."""
    run_dir, base = host_run_dir(plan), host_dir(state_dir, plan)

    def daemon(name: str, sock: str) -> Daemon:
        return Daemon(name, run_dir / sock, base / f"{name}.pid", base / f"{name}.log",
                      plan.namespace)

    return daemon("virtlogd", "virtlogd-sock"), daemon("libvirtd", "libvirt-sock")


def _manage(state_dir: Path, plan: HostPlan) -> Virsh:
    """The lab's own way to the host: its unix socket, from any namespace."""
    return Virsh(plan.management_uri(), scratch=host_dir(state_dir, plan))


def _over_tcp(state_dir: Path, plan: HostPlan) -> Virsh:
    """The controller's way to the host: ``qemu+tcp://`` from the lab's namespace."""
    return Virsh(plan.uri, scratch=host_dir(state_dir, plan), namespace=LAB_NAMESPACE)


def _has_leftovers(state_dir: Path, plan: HostPlan, lab: _LabView) -> bool:
    return (
        netns_exists(plan.namespace)
        or plan.veth in lab.links
        or str(plan.subnet) in lab.routes
        or host_run_dir(plan).exists()
        or any(d.pid_file.exists() for d in _daemons(state_dir, plan))
    )


# --- bringing hosts up -----------------------------------------------------------------------------


def ensure_hosts(state_dir: Path, count: int | None, progress: Progress) -> None:
    """Make hosts lab-1..lab-``count`` run (None: as many as last asked for) and remove any
    other host's leftovers. Changes nothing when all is as it should be."""
    if count is not None:
        _record_count(state_dir, count)
    plans = host_plans(wanted_count(state_dir))
    lab = _LabView()
    for extra in range(len(plans) + 1, HOSTS_MAX + 1):
        plan = HostPlan(extra)
        if _has_leftovers(state_dir, plan, lab):
            _remove_host(state_dir, plan, progress)
    if not plans:
        if HOSTS_BRIDGE in lab.links and delete_link(LAB_NAMESPACE, HOSTS_BRIDGE):
            progress(f"removed bridge {HOSTS_BRIDGE}")
        return
    for tool_name in HOST_TOOLS:
        tool(tool_name)
    _ensure_bridge(lab, progress)
    for plan in plans:
        _ensure_host(state_dir, plan, lab, progress)


def _ensure_bridge(lab: _LabView, progress: Progress) -> None:
    want = f"{HOSTS_LAB_ADDRESS}/{HOSTS_BACKBONE.prefixlen}"
    if HOSTS_BRIDGE not in lab.links:
        progress(f"creating bridge {HOSTS_BRIDGE} ({want}) in namespace {LAB_NAMESPACE}")
        # No STP: ports forward at once; the bridge joins only the lab's hosts, no loop.
        ip_in(LAB_NAMESPACE, "link", "add", "name", HOSTS_BRIDGE, "type", "bridge")
    if want not in lab.addresses.get(HOSTS_BRIDGE, set()):
        ip_in(LAB_NAMESPACE, "addr", "add", want, "dev", HOSTS_BRIDGE)
    if not (HOSTS_BRIDGE in lab.links and lab.links[HOSTS_BRIDGE].up):
        ip_in(LAB_NAMESPACE, "link", "set", HOSTS_BRIDGE, "up")


def _ensure_host(state_dir: Path, plan: HostPlan, lab: _LabView, progress: Progress) -> None:
    ensure_netns(plan.namespace, progress)
    _ensure_veth(plan, lab, progress)
    if not lab.has_route(plan):
        progress(f"routing {plan.subnet} via {plan.name} ({plan.address}) in {LAB_NAMESPACE}")
        ip_in(LAB_NAMESPACE, "route", "replace", str(plan.subnet), "via", plan.address,
              "dev", HOSTS_BRIDGE)
    _ensure_host_dirs(state_dir, plan, progress)
    virtlogd, libvirtd = _daemons(state_dir, plan)
    start_libvirtd = partial(_daemon_argv, state_dir, plan, libvirtd, "--listen")
    ensure_daemon(virtlogd, partial(_daemon_argv, state_dir, plan, virtlogd), progress)
    _pid, started = ensure_daemon(libvirtd, start_libvirtd, progress)
    manage, tcp = _manage(state_dir, plan), _over_tcp(state_dir, plan)
    manage.wait_answers(libvirtd.log_file)
    if not started and not tcp.answers():
        # Its socket answers but TCP does not (its address went away under it): restart it.
        progress(f"libvirtd of {plan.name} does not answer on {plan.uri}; restarting it")
        stop_daemon(libvirtd, progress)
        ensure_daemon(libvirtd, start_libvirtd, progress)
        manage.wait_answers(libvirtd.log_file)
    tcp.wait_answers(libvirtd.log_file)
    manage.ensure_network(
        plan.network, host_network_xml(plan), bridge=plan.bridge,
        bridge_namespace=plan.namespace, what=f"routed, {plan.gateway}/{plan.subnet.prefixlen}",
        progress=progress)
    manage.ensure_pool(plan.pool, host_pool_dir(state_dir, plan), progress)


def _ensure_veth(plan: HostPlan, lab: _LabView, progress: Progress) -> None:
    """The host's veth pair: ``eth0`` with the host's address in its namespace, the other end
    on the lab's bridge. A half left behind (its peer gone or another's) is replaced."""
    inside = ip_in(plan.namespace, "-j", "addr", "show", check=False).stdout
    ours, theirs = lab.links.get(plan.veth), ip_links(inside).get(HOST_IFACE)
    paired = (ours is not None and theirs is not None
              and theirs.peer_ifindex == ours.ifindex and ours.peer_ifindex == theirs.ifindex)
    if not paired:
        if ours is not None:
            progress(f"removing veth {plan.veth} left behind")
            delete_link(LAB_NAMESPACE, plan.veth)
        if theirs is not None:
            delete_link(plan.namespace, HOST_IFACE)
        progress(f"creating veth pair {plan.veth} (on {HOSTS_BRIDGE}) - {HOST_IFACE} of "
                 f"{plan.name} ({plan.address})")
        ip_in(LAB_NAMESPACE, "link", "add", plan.veth, "type", "veth",
              "peer", "name", HOST_IFACE, "netns", plan.namespace)
        ours, inside = None, ""
    if ours is None or ours.master != HOSTS_BRIDGE:
        ip_in(LAB_NAMESPACE, "link", "set", plan.veth, "master", HOSTS_BRIDGE)
    if ours is None or not ours.up:
        ip_in(LAB_NAMESPACE, "link", "set", plan.veth, "up")
    want = f"{plan.address}/{HOSTS_BACKBONE.prefixlen}"
    if want not in ip_addresses(inside).get(HOST_IFACE, set()):
        ip_in(plan.namespace, "addr", "add", want, "dev", HOST_IFACE)
    link = ip_links(inside).get(HOST_IFACE)
    if link is None or not link.up:
        ip_in(plan.namespace, "link", "set", HOST_IFACE, "up")


def _ensure_host_dirs(state_dir: Path, plan: HostPlan, progress: Progress) -> None:
    base = host_dir(state_dir, plan)
    ensure_traversable_dirs([state_dir, lab_dir(state_dir), hosts_dir(state_dir), base,
                             host_pool_dir(state_dir, plan)])
    try:
        for sub, mode, owner in HOST_SKELETON:
            path = base / sub
            path.mkdir(exist_ok=True)
            uid, gid = pwd.getpwnam(owner).pw_uid, grp.getgrnam(owner).gr_gid
            st = path.stat()
            if (st.st_uid, st.st_gid) != (uid, gid):
                os.chown(path, uid, gid)
            if st.st_mode & 0o7777 != mode:
                path.chmod(mode)
        host_run_dir(plan).mkdir(mode=0o755, parents=True, exist_ok=True)
        etc = base / "etc"
        for name in HOST_ETC_COPIED:
            src, dst = _MACHINE_ETC / name, etc / name
            if dst.exists() or not src.exists():
                continue
            if src.is_dir():
                shutil.copytree(src, dst)
            else:
                shutil.copy2(src, dst)
        caps = base / _HOST_QEMU_CAPS
        if not any(caps.glob("*.xml")) and any(_MACHINE_QEMU_CAPS.glob("*.xml")):
            progress(f"copying the lab's qemu capabilities cache to {plan.name}")
            for cached in _MACHINE_QEMU_CAPS.glob("*.xml"):
                shutil.copy2(cached, caps / cached.name)
        conf, text = etc / "libvirtd.conf", host_libvirtd_conf(plan)
        if not conf.exists() or conf.read_text() != text:
            progress(f"writing {conf}")
            conf.write_text(text)
    except (OSError, KeyError) as exc:
        raise EnvironmentProblem(f"cannot prepare the directories of {plan.name}: {exc}") from exc


def _daemon_argv(state_dir: Path, plan: HostPlan, daemon: Daemon, *flags: str) -> list[str]:
    return in_netns(plan.namespace, *host_daemon_argv(
        unshare=tool("unshare"), sh=tool("sh"), binds=host_binds(state_dir, plan),
        hostname=plan.name,
        argv=[tool(daemon.name), "-d", *flags, "-p", str(daemon.pid_file)]))


# --- taking hosts down -----------------------------------------------------------------------------


def remove_hosts(state_dir: Path, progress: Progress) -> None:
    """Remove every host and the bridge (``lab down``); their state dirs are kept."""
    lab = _LabView()
    for index in range(1, HOSTS_MAX + 1):
        plan = HostPlan(index)
        if _has_leftovers(state_dir, plan, lab):
            _remove_host(state_dir, plan, progress)
    if HOSTS_BRIDGE in lab.links and delete_link(LAB_NAMESPACE, HOSTS_BRIDGE):
        progress(f"removed bridge {HOSTS_BRIDGE}")
    _record_count(state_dir, 0)


def _remove_host(state_dir: Path, plan: HostPlan, progress: Progress) -> None:
    """Power off the host's domains, stop its network, pool and daemons, remove its veth,
    route and namespace. Definitions and volumes stay in its state dir."""
    progress(f"removing host {plan.name}")
    virtlogd, libvirtd = _daemons(state_dir, plan)
    manage = _manage(state_dir, plan)
    if daemon_pid(libvirtd) is not None and manage.answers():
        for name in manage("list", "--name").stdout.split():
            progress(f"powering off {name} on {plan.name}")
            manage("destroy", name, check=False)  # stopped meanwhile is stopped
        net = manage.info("net", plan.network)
        if net is not None and net.get("active") == "yes":
            manage("net-destroy", plan.network)
        pool = manage.info("pool", plan.pool)
        if pool is not None and pool.get("state") == "running":
            manage("pool-destroy", plan.pool)
    else:
        _stop_orphans(plan, progress)
    stop_daemon(libvirtd, progress)
    stop_daemon(virtlogd, progress)
    if netns_exists(LAB_NAMESPACE):
        delete_link(LAB_NAMESPACE, plan.veth)  # its peer, the host's eth0, goes with it
        if ip_in(LAB_NAMESPACE, "route", "show", str(plan.subnet), check=False).stdout.strip():
            ip_in(LAB_NAMESPACE, "route", "delete", str(plan.subnet), check=False)
    if delete_netns_if_empty(plan.namespace, progress):
        shutil.rmtree(host_run_dir(plan), ignore_errors=True)


def _stop_orphans(plan: HostPlan, progress: Progress) -> None:
    """The host's libvirtd is gone: end the dnsmasq and guests it left in the namespace."""
    run_dir = host_run_dir(plan)
    found = [(p, "dnsmasq") for p in [run_dir / "network" / f"{plan.network}.pid"]]
    found += [(p, _QEMU_COMM) for p in sorted((run_dir / "qemu").glob("*.pid"))]
    for pid_file, comm in found:
        pid = read_pid_file(pid_file)
        if pid is not None and process_alive(pid, comm=comm) and pid_in_netns(plan.namespace, pid):
            progress(f"stopping {comm} ({pid}) left by the libvirtd of {plan.name}")
            stop_pid(pid, comm=comm)


# --- observing -------------------------------------------------------------------------------------


def hosts_status(state_dir: Path) -> tuple[LabHost, ...]:
    """The hosts the lab was asked for, and any other host something is left of; changes
    nothing."""
    lab = _LabView()
    count = wanted_count(state_dir)
    found = [_host_status(state_dir, plan, lab, wanted=True) for plan in host_plans(count)]
    for index in range(count + 1, HOSTS_MAX + 1):
        plan = HostPlan(index)
        if _has_leftovers(state_dir, plan, lab):
            found.append(_host_status(state_dir, plan, lab, wanted=False))
    return tuple(found)


def _host_status(state_dir: Path, plan: HostPlan, lab: _LabView, *, wanted: bool) -> LabHost:
    problems: list[str] = []
    if not wanted:
        problems.append(f"{plan.name} is left over (the lab has {wanted_count(state_dir)} "
                        "hosts); `orch lab up` removes it")
    namespace = netns_exists(plan.namespace)
    pids: dict[str, int | None] = {}
    for daemon in _daemons(state_dir, plan):
        pid, problem = live_daemon_pid(daemon.pid_file, comm=daemon.name)
        if problem:
            problems.append(f"{plan.name}: {problem}")
        if pid is not None and not pid_in_netns(plan.namespace, pid):
            problems.append(f"{plan.name}: {daemon.name} ({pid}) runs outside namespace "
                            f"{plan.namespace}")
        pids[daemon.name] = pid
    answers = network_active = pool_active = False
    if pids["libvirtd"] is not None:
        manage = _manage(state_dir, plan)
        answers = netns_exists(LAB_NAMESPACE) and _over_tcp(state_dir, plan).answers()
        if not answers:
            problems.append(f"{plan.name}: libvirtd ({pids['libvirtd']}) does not answer on "
                            f"{plan.uri} from namespace {LAB_NAMESPACE}")
        if manage.answers():
            net = manage.info("net", plan.network)
            network_active = net is not None and net.get("active") == "yes"
            if net is None:
                problems.append(f"{plan.name}: network {plan.network} is not defined")
            else:
                problems += host_network_mismatches(
                    manage("net-dumpxml", plan.network).stdout, plan)
            pool = manage.info("pool", plan.pool)
            pool_active = pool is not None and pool.get("state") == "running"
            if pool is None:
                problems.append(f"{plan.name}: storage pool {plan.pool} is not defined")
    veth = lab.links.get(plan.veth)
    if wanted and (veth is None or veth.master != HOSTS_BRIDGE):
        problems.append(f"{plan.name}: veth {plan.veth} is not on bridge {HOSTS_BRIDGE}")
    return LabHost(plan=plan, namespace=namespace, virtlogd_pid=pids["virtlogd"],
                   libvirtd_pid=pids["libvirtd"], answers=answers,
                   network_active=network_active, pool_active=pool_active,
                   route=lab.has_route(plan), problems=tuple(problems))
