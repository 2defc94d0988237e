"""The lab's side-effecting primitives, shared by the lab and its simulated hosts: running
tools, network namespaces, daemons tracked by pid files, and libvirt objects driven through
``virsh``.

Owned here: the subprocess boundary of the lab (``run``: a timeout, and failures as
``EnvironmentProblem``), namespace checks and creation, starting a daemon and waiting until
its unix socket answers, stopping a pid only while it still is the program we started, and
``Virsh`` (one libvirt connection's networks and pools, defined and started idempotently).
Called by: lab, labhosts

libvirt is driven through the ``virsh`` CLI here, never the Python binding: the libvirt adapter
(``hypervisor/libvirt.py``) is the only module importing libvirt.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import EnvironmentProblem
from orchestrator.labconfig import live_daemon_pid, pool_target_path, pool_xml, process_alive

NETNS_DIR = Path("/run/netns")
SBIN_FALLBACK = ("/usr/local/sbin", "/usr/sbin", "/sbin")
DAEMON_READY_SECONDS = 20.0
DAEMON_STOP_SECONDS = 10.0
COMMAND_TIMEOUT = 60.0

Progress = Callable[[str], None]


def no_progress(_line: str) -> None:
    pass


# --- subprocess boundary ------------------------------------------------------------------------


def find_tool(name: str) -> str | None:
    # Non-login root shells and `sudo -E` may lack sbin on PATH; the daemons live there.
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_FALLBACK))


def tool(name: str) -> str:
    found = find_tool(name)
    if found is None:
        raise EnvironmentProblem(f"required tool {name!r} not found", hint="run `make setup`")
    return found


def check_tools(names: Sequence[str]) -> None:
    missing = [name for name in names if find_tool(name) is None]
    if missing:
        raise EnvironmentProblem(
            f"tools missing for the lab: {', '.join(missing)}", hint="run `make setup`"
        )


def require_root() -> None:
    if os.geteuid() != 0:
        raise EnvironmentProblem("orch lab needs root", hint="run it as root (sudo)")


def run(
    argv: Sequence[str], *, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise EnvironmentProblem(
            f"{' '.join(argv)} did not finish in {COMMAND_TIMEOUT:.0f} s"
        ) from exc
    except OSError as exc:
        raise EnvironmentProblem(f"cannot run {argv[0]}: {exc}", hint="run `make setup`") from exc
    if check and proc.returncode != 0:
        raise EnvironmentProblem(
            f"{' '.join(argv)} failed: {last_line(proc.stderr or proc.stdout)}"
        )
    return proc


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


# --- network namespaces ---------------------------------------------------------------------------


def in_netns(namespace: str, *argv: str) -> list[str]:
    """``argv`` run in ``namespace`` by ``ip netns exec``, which also mounts a sysfs of that
    namespace (libvirt's network driver reads bridges there)."""
    return [tool("ip"), "netns", "exec", namespace, *argv]


def netns_path(namespace: str) -> Path:
    return NETNS_DIR / namespace


def netns_exists(namespace: str) -> bool:
    return netns_path(namespace).exists()


def pid_in_netns(namespace: str, pid: int) -> bool:
    """Whether a process lives in the current ``namespace`` (what `ip netns identify` does)."""
    try:
        ours = netns_path(namespace).stat()
        theirs = Path(f"/proc/{pid}/ns/net").stat()
    except OSError:
        return False
    return (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino)


def ensure_netns(namespace: str, progress: Progress) -> None:
    ip = tool("ip")
    # A name left behind without its namespace (e.g. /run not cleaned) cannot be entered.
    entered = (
        netns_exists(namespace)
        and run([ip, "netns", "exec", namespace, "true"], check=False).returncode == 0
    )
    if netns_exists(namespace) and not entered:
        progress(f"removing unusable namespace {namespace}")
        run([ip, "netns", "delete", namespace], check=False)
    if not netns_exists(namespace):
        progress(f"creating network namespace {namespace}")
        run([ip, "netns", "add", namespace])
    run(in_netns(namespace, ip, "link", "set", "lo", "up"))


def ip_in(namespace: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``ip ARGS`` inside ``namespace``."""
    return run(in_netns(namespace, tool("ip"), *args), check=check)


def delete_link(namespace: str, link: str) -> bool:
    """Delete network device ``link`` of ``namespace`` if it is there; whether it was."""
    if ip_in(namespace, "link", "show", link, check=False).returncode != 0:
        return False
    ip_in(namespace, "link", "delete", link)
    return True


def netns_pids(namespace: str) -> list[int]:
    proc = run([tool("ip"), "netns", "pids", namespace], check=False)
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


def delete_netns_if_empty(namespace: str, progress: Progress) -> bool:
    """Delete ``namespace`` unless processes still run in it (those are named, not killed)."""
    if not netns_exists(namespace):
        return True
    leftovers = netns_pids(namespace)
    if leftovers:
        progress(
            f"keeping namespace {namespace}: processes still run in it "
            f"({', '.join(map(str, leftovers))})"
        )
        return False
    progress(f"deleting network namespace {namespace}")
    run([tool("ip"), "netns", "delete", namespace])
    return True


# --- directories --------------------------------------------------------------------------------


def ensure_traversable_dirs(paths: Sequence[Path]) -> None:
    """Create ``paths`` (in order) with o+x: libvirt-qemu opens images and volumes under them."""
    try:
        for path in paths:
            path.mkdir(mode=0o711, parents=True, exist_ok=True)
            mode = path.stat().st_mode & 0o7777
            if mode & 0o011 != 0o011:
                path.chmod(mode | 0o011)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot prepare lab directory: {exc}") from exc


def untraversable_parents(path: Path) -> list[str]:
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
class Daemon:
    """A daemon of the lab: its program, the unix socket it serves, its pid and log files,
    and the network namespace it must live in."""

    name: str
    socket: Path
    pid_file: Path
    log_file: Path
    namespace: str


def socket_server_pid(path: Path) -> int | None:
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


def daemon_pid(daemon: Daemon) -> int | None:
    pid, _problem = live_daemon_pid(daemon.pid_file, comm=daemon.name)
    return pid


def ensure_daemon(
    daemon: Daemon, start: Callable[[], Sequence[str]], progress: Progress
) -> tuple[int, bool]:
    """(pid, whether it was started now) of ``daemon``, started with the argv ``start()``
    gives (which must write the pid file) unless it already runs in its namespace."""
    pid = daemon_pid(daemon)
    if pid is not None and not pid_in_netns(daemon.namespace, pid):
        # Ours, but stranded in a namespace that was deleted and re-created: restart it.
        progress(f"{daemon.name} ({pid}) is not in namespace {daemon.namespace}; restarting it")
        stop_pid(pid, comm=daemon.name)
        pid = None
    if pid is not None:
        return pid, False
    if daemon.pid_file.exists():
        progress(f"removing stale {daemon.name} pid file {daemon.pid_file}")
        daemon.pid_file.unlink(missing_ok=True)
    server = socket_server_pid(daemon.socket)
    if server is not None:
        raise EnvironmentProblem(
            f"a {daemon.name} not started by `orch lab up` (pid {server}) serves {daemon.socket}",
            hint=f"stop it (kill {server}) and run `orch lab up` again",
        )
    progress(f"starting {daemon.name} in namespace {daemon.namespace}")
    env = dict(os.environ)
    # Daemonised, they lose stderr; keep warnings where `orch lab status` users can find them.
    env["LIBVIRT_LOG_OUTPUTS"] = f"3:file:{daemon.log_file}"
    run(start(), env=env)
    deadline = time.monotonic() + DAEMON_READY_SECONDS
    while True:
        pid = daemon_pid(daemon)
        if pid is not None and socket_server_pid(daemon.socket) is not None:
            return pid, True
        if time.monotonic() > deadline:
            raise EnvironmentProblem(
                f"{daemon.name} did not come up within {DAEMON_READY_SECONDS:.0f} s",
                hint=f"see {daemon.log_file}",
            )
        time.sleep(0.1)


def stop_pid(pid: int, *, comm: str) -> None:
    """SIGTERM, wait with a deadline, then SIGKILL; only if the pid still is ``comm``."""
    for sig, wait in ((signal.SIGTERM, DAEMON_STOP_SECONDS), (signal.SIGKILL, 5.0)):
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


def stop_daemon(daemon: Daemon, progress: Progress) -> None:
    pid = daemon_pid(daemon)
    if pid is not None:
        progress(f"stopping {daemon.name} ({pid})")
        stop_pid(pid, comm=daemon.name)
    daemon.pid_file.unlink(missing_ok=True)


# --- libvirt objects ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Virsh:
    """One libvirt connection as the lab drives it: ``virsh -c uri``, optionally run inside a
    network namespace (``namespace``), with temporary XML files under ``scratch``."""

    uri: str
    scratch: Path
    namespace: str | None = None

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [tool("virsh"), "-q", "-c", self.uri, *args]
        return run(in_netns(self.namespace, *argv) if self.namespace else argv, check=check)

    def answers(self) -> bool:
        # `virsh uri` is a full connect and round trip in ~20 ms; `virsh version` also asks the
        # qemu driver for the hypervisor version, measured at 3.5-4 s per call on this machine.
        return self("uri", check=False).returncode == 0

    def wait_answers(self, log_file: Path) -> None:
        deadline = time.monotonic() + DAEMON_READY_SECONDS
        while not self.answers():
            if time.monotonic() > deadline:
                raise EnvironmentProblem(
                    f"libvirtd does not answer on {self.uri}", hint=f"see {log_file}"
                )
            time.sleep(0.2)

    def info(self, kind: str, name: str) -> dict[str, str] | None:
        """``net-info``/``pool-info`` as a dict, or None if the object is not defined."""
        proc = self(f"{kind}-info", name, check=False)
        if proc.returncode != 0:
            return None
        info: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                info[key.strip().lower()] = value.strip()
        return info

    def define_from_xml(self, command: str, xml_text: str) -> None:
        with tempfile.NamedTemporaryFile(
            "w", suffix=".xml", dir=self.scratch, delete=False
        ) as handle:
            handle.write(xml_text)
        try:
            self(command, handle.name)
        finally:
            os.unlink(handle.name)

    def ensure_network(
        self, name: str, xml_text: str, *, bridge: str, bridge_namespace: str, what: str,
        progress: Progress,
    ) -> None:
        """Define (from ``xml_text``) and start network ``name``; autostart off. ``bridge`` is
        its bridge, in network namespace ``bridge_namespace`` (where the daemon runs)."""
        info = self.info("net", name)
        if info is None:
            progress(f"defining network {name} ({what})")
            self.define_from_xml("net-define", xml_text)
            info = self.info("net", name) or {}
        if info.get("active") != "yes":
            progress(f"starting network {name}")
            proc = self("net-start", name, check=False)
            # libvirt says the network is inactive, so a bridge of that name is a leftover of a
            # killed libvirtd; it fails net-start with "already exists" or "already in use by
            # interface ..." (route check), depending on what survived.
            if proc.returncode != 0 and delete_link(bridge_namespace, bridge):
                progress(f"removed bridge {bridge} left behind; starting network again")
                proc = self("net-start", name, check=False)
            if proc.returncode != 0:
                raise EnvironmentProblem(f"cannot start network {name}: {last_line(proc.stderr)}")
        if info.get("autostart") != "no":
            self("net-autostart", name, "--disable")

    def ensure_pool(self, name: str, path: Path, progress: Progress) -> None:
        """Define and start the ``dir`` pool ``name`` at ``path``; autostart off. A pool of
        that name elsewhere is refused, not moved."""
        want = path.resolve()
        info = self.info("pool", name)
        if info is None:
            progress(f"defining storage pool {name} at {want}")
            self.define_from_xml("pool-define", pool_xml(want, name=name))
            info = self.info("pool", name) or {}
        else:
            have = pool_target_path(self("pool-dumpxml", name).stdout)
            if have is None or Path(have).resolve() != want:
                raise EnvironmentProblem(
                    f"storage pool {name} already exists with path {have}, not {want}",
                    hint="use the --state-dir it belongs to, or "
                    f"`virsh pool-destroy {name}; virsh pool-undefine {name}` "
                    "if nothing uses it",
                )
        if info.get("state") != "running":
            progress(f"starting storage pool {name}")
            self("pool-build", name, check=False)  # a no-op error if the dir exists
            self("pool-start", name)
        else:
            self("pool-refresh", name)
        if info.get("autostart") != "no":
            self("pool-autostart", name, "--disable")

    def pool_path(self, name: str) -> str | None:
        return pool_target_path(self("pool-dumpxml", name).stdout)
