"""Faults on real tiny VMs (docs/semantics.md#crash-safety): the CLI SIGKILLed in the middle
of a rolling upgrade (in place and with MaxSurge) and resumed by ``orch controller run
--once``; an sshd that accepts TCP but never answers; a VM destroyed behind the controller's
back mid-upgrade.

Each test boots at most 3 instances (2 cores, TCG), bounds every command with a time-out,
and ends by checking that libvirt holds exactly the objects expected: one domain, one OS
volume, one seed volume and one DHCP reservation per surviving instance, nothing else.
The only sleeps are the deliberate short delays before a kill; everything else polls a
condition against a deadline.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.store import RollingUpgradeRecord, Store

from .conftest import ORCH, Orch, assert_exactly, libvirt_objects, virsh

pytestmark = pytest.mark.vm

NOTHING: dict[str, list[str]] = {"domains": [], "volumes": [], "hosts": []}
VERSION = ". /etc/os-release; echo $VERSION_ID"
PROBE_TIMEOUT = 5.0  # the healthProbe default (docs/semantics.md#probe); kept by the sets below
# In place, batches of 1 of 3 (34% rounds down to 1).
ROLLING_3 = ("--upgrade-policy-mode", "Rolling", "--max-batch-instance-percent", "34",
             "--max-unhealthy-instance-percent", "34")


# --- helpers ------------------------------------------------------------------------------
@pytest.fixture
def set_name(orch: Orch) -> Iterator[str]:
    """A fresh set name; afterwards the set is deleted and libvirt must hold nothing of it."""
    name = orch.new_set_name()
    yield name
    orch.run("vmss", "delete", "--name", name, check=False, timeout=300)
    assert libvirt_objects(f"{name}-") == NOTHING


class Streamed:
    """An `orch` command run in the background whose progress lines (stderr) are read as
    they come, so a test can act at a precise point of the operation."""

    def __init__(self, orch: Orch, *args: str) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen([ORCH, "--state-dir", str(orch.state_dir), *args],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, *, timeout: float) -> re.Match[str]:
        """The first progress line (from now on) matching ``pattern``; fails at the deadline
        or if the command ends first."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line matching {pattern!r} within {timeout:g}s:\n"
                                     + "\n".join(self.lines))
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"command ended (exit {self.proc.wait(10)}) before a line "
                                     f"matching {pattern!r}:\n" + "\n".join(self.lines))
            self.lines.append(line)
            m = re.search(pattern, line)
            if m:
                return m

    def kill(self, *, reap: bool = True) -> None:
        """SIGKILL the command; with ``reap`` false it is left a zombie (as under a PID 1
        that does not reap): dead, its pid still present, until ``reap_killed``."""
        os.kill(self.proc.pid, signal.SIGKILL)
        if reap:
            assert self.proc.wait(timeout=30) == -signal.SIGKILL
            return
        stat = Path(f"/proc/{self.proc.pid}/stat")
        deadline = time.monotonic() + 30
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the killed command never died"
            time.sleep(0.05)

    def reap_killed(self) -> None:
        assert self.proc.wait(timeout=30) == -signal.SIGKILL

    def finish(self, *, timeout: float) -> int:
        """Exit code, once the command ended on its own (at most ``timeout`` from its start)."""
        code = self.proc.wait(timeout=max(1.0, timeout - (time.monotonic() - self.started)))
        self._reader.join(timeout=10)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.lines.append(line)
        return code

    def stop_if_running(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = fn()
    return result, time.monotonic() - started


def latest(orch: Orch, set_name: str) -> dict[str, Any]:
    found: dict[str, Any] = orch.json("vmss", "rolling-upgrade", "get-latest", "--name", set_name)
    return found


def upgrade_record(orch: Orch, set_name: str,
                   upgrade_id: int | None = None) -> RollingUpgradeRecord:
    """A rolling-upgrade record straight from the state database: the CLI shows only the
    latest one, and a superseded record must still say what became of it."""
    store = Store(orch.state_dir / "orchestrator.db")
    try:
        if upgrade_id is None:
            found = store.latest_rolling_upgrade(set_name)
            assert found is not None, f"{set_name} has no rolling upgrade"
            return found
        return store.get_rolling_upgrade(upgrade_id)
    finally:
        store.close()


def guest_version(orch: Orch, set_name: str, instance_id: int) -> str:
    out = orch.sh(set_name, instance_id, VERSION)
    assert out["exitStatus"] == 0, out
    version: str = out["stdout"].strip()
    return version


def controller_once(orch: Orch) -> subprocess.CompletedProcess[str]:
    return orch.run("controller", "run", "--once", "-o", "json", timeout=400)


def domain_state(name: str) -> str:
    proc = subprocess.run(["virsh", "-q", "-c", "qemu:///system", "domstate", name],
                          capture_output=True, text=True, timeout=60, check=False)
    return proc.stdout.strip() or proc.stderr.strip()


def create(orch: Orch, set_name: str, count: int, *flags: str) -> None:
    orch.run("vmss", "create", "--name", set_name, "--image", "tiny:1",
             "--instance-count", str(count), *flags, timeout=300)


# --- 1. SIGKILL during an in-place batch --------------------------------------------------------
def wait_domain_state(name: str, wanted: str, *, timeout: float) -> None:
    """Poll libvirt (each virsh call is the interval) until ``name`` is in state ``wanted``."""
    deadline = time.monotonic() + timeout
    while (state := domain_state(name)) != wanted:
        assert time.monotonic() < deadline, f"{name} still {state!r} after {timeout:g}s"


# Where in the batch's instance the process dies: as soon as it says it applies the new
# generation (the ACPI shutdown just requested, or about to be; the tiny guest is off within
# ~0.3 s); once it is powered off (the new OS disk being made); right after the domain was
# started on the new model (its generation recorded, its health not yet awaited nor committed).
# "unreaped": killed when powered off, like "powered-off", and left a zombie while the
# controller runs: its pid still answers kill(pid, 0), its lock is gone
KILL_POINTS = ["shutting-down", "powered-off", "restarted", "unreaped"]


@pytest.mark.parametrize("kill_point", KILL_POINTS)
def test_sigkill_mid_in_place_batch_is_resumed_by_controller(orch: Orch, set_name: str,
                                                             kill_point: str) -> None:
    create(orch, set_name, 3, *ROLLING_3)
    update = Streamed(orch, "vmss", "update", "--name", set_name, "--image", "tiny:2")
    try:
        batch = int(update.wait_for(rf"{set_name}: batch 1: instances (\d+) \(in place\)",
                                    timeout=120)[1])
        update.wait_for(rf"{set_name}-{batch}: applying generation 2 \(tiny:2\)", timeout=60)
        domain = f"{set_name}-{batch}"
        if kill_point != "shutting-down":
            wait_domain_state(domain, "shut off", timeout=90)
            if kill_point == "restarted":
                wait_domain_state(domain, "running", timeout=60)
        state_at_kill = domain_state(domain)
        update.kill(reap=kill_point != "unreaped")
    finally:
        if kill_point != "unreaped":
            update.stop_if_running()

    # the record still says RollingForward, but nothing drives it any more
    interrupted = latest(orch, set_name)
    assert interrupted["runningStatus"]["code"] == "RollingForward", interrupted
    assert interrupted["inFlight"] == [batch], interrupted
    interrupted_id = upgrade_record(orch, set_name).id
    # the process records the new generation only once the domain runs it: before that the
    # store still says 1 (the controller may find the domain redefined; see below)
    behind = sorted(i["instanceId"] for i in orch.instances(set_name)
                    if i["modelGeneration"] != 2)
    assert behind == ([0, 1, 2] if kill_point != "restarted"
                      else sorted({0, 1, 2} - {batch})), (kill_point, state_at_kill, behind)

    try:
        proc, took = timed(lambda: controller_once(orch))
    finally:
        if kill_point == "unreaped":
            update.reap_killed()
    print(f"{kill_point}: domain state at kill: {state_at_kill}; "
          f"controller run --once: {took:.1f}s")
    assert "resuming an interrupted rolling upgrade" in proc.stderr, proc.stderr

    now = orch.instances(set_name)
    assert [i["instanceId"] for i in now] == [0, 1, 2]
    for inst in now:
        assert inst["image"] == "tiny:2" and inst["latestModelApplied"] is True, inst
        assert inst["healthState"] == "Healthy" and inst["powerState"] == "running", inst
        assert guest_version(orch, set_name, inst["instanceId"]) == "2"
    assert_exactly(set_name, [0, 1, 2])

    status = latest(orch, set_name)
    assert status["runningStatus"]["code"] == "Completed", status
    # the interrupted record (not shown by get-latest any more) says what became of it
    superseded = upgrade_record(orch, set_name, interrupted_id)
    assert superseded.status == "Cancelled" and superseded.end_time, superseded
    assert "interrupted" in superseded.detail["cancel"], superseded.detail
    assert "superseded" in superseded.detail["cancel"], superseded.detail
    # a domain the killed process had already redefined on generation 2 is recorded so by
    # the controller (libvirt's objects win) before the upgrade resumes; only the batch's
    # instance can be one
    adopted = sorted(int(i) for i in re.findall(
        rf"{re.escape(set_name)}-(\d+): its domain runs generation 2, not 1", proc.stderr))
    assert set(adopted) <= {batch}, (adopted, proc.stderr)
    redone = sorted(set(behind) - set(adopted))
    # get-latest shows the upgrade that took over; it did exactly the instances behind
    assert status["progress"]["successfulInstanceCount"] == len(redone), status
    assert status["progress"]["failedInstanceCount"] == 0, status
    assert sorted(i for b in status["batches"] for i in b["instances"]) == redone, status
    if kill_point == "restarted":
        # skipped by the upgrade, its health was proved and its new model committed
        assert f"{set_name}-{batch}: healthy on its new model" in proc.stderr, proc.stderr


# --- 2. SIGKILL while a surge replacement is being created ---------------------------------------
def test_sigkill_mid_surge_batch_is_resumed_without_excess(orch: Orch, set_name: str) -> None:
    create(orch, set_name, 2, "--upgrade-policy-mode", "Rolling", "--max-surge", "true",
           "--max-batch-instance-percent", "50", "--max-unhealthy-instance-percent", "50")
    capacity, batch_size = 2, 1
    update = Streamed(orch, "vmss", "update", "--name", set_name, "--image", "tiny:2")
    try:
        update.wait_for(rf"{set_name}: batch 1: instances \d+ \(surge\)", timeout=120)
        new_id = int(update.wait_for(rf"{set_name}-(\d+): creating", timeout=60)[1])
        update.kill()
    finally:
        update.stop_if_running()
    assert new_id not in (0, 1)
    by_id = {i["instanceId"]: i for i in orch.instances(set_name)}
    print(f"surge replacement {new_id} at kill: {by_id.get(new_id, {}).get('powerState')}")
    assert by_id[new_id]["powerState"] == "creating", by_id

    # watch libvirt while the controller resumes: the surge ceiling must hold throughout
    most = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal most
        while not done.wait(0.5):
            most = max(most, len(libvirt_objects(f"{set_name}-")["domains"]))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        proc, took = timed(lambda: controller_once(orch))
    finally:
        done.set()
        watcher.join(timeout=60)
    print(f"controller run --once: {took:.1f}s; most domains seen: {most}")
    assert most <= capacity + batch_size, proc.stderr
    assert f"{set_name}-{new_id}: removing a half-created instance" in proc.stderr, proc.stderr
    assert orch.json("vmss", "show", "--name", set_name)["capacity"] == capacity

    now = orch.instances(set_name)
    ids = [i["instanceId"] for i in now]
    assert len(ids) == capacity and not {0, 1} & set(ids), now
    for inst in now:
        assert inst["image"] == "tiny:2" and inst["healthState"] == "Healthy", inst
        assert guest_version(orch, set_name, inst["instanceId"]) == "2"
    assert_exactly(set_name, ids)
    status = latest(orch, set_name)
    assert status["runningStatus"]["code"] == "Completed" and status["surge"] is True, status


# --- 3. an sshd that accepts TCP but never answers -------------------------------------------------
def banner_within(ip: str, seconds: float) -> bool:
    """True if the SSH server at ``ip`` sends its banner within ``seconds`` of connecting."""
    try:
        with socket.create_connection((ip, 22), timeout=seconds) as sock:
            sock.settimeout(seconds)
            return sock.recv(64).startswith(b"SSH-")
    except TimeoutError:
        return False


def test_hung_sshd_is_unknown_within_bound_then_restart_recovers(orch: Orch, set_name: str) -> None:
    create(orch, set_name, 2, "--upgrade-policy-mode", "Manual")
    hung = 0
    ip = orch.view(set_name, hung)["ipAddress"]
    assert banner_within(ip, 5.0)
    # stop the listening dropbear only, after run-command's own session (a child) has ended
    out = orch.sh(set_name, hung, "setsid sh -c 'sleep 1; kill -STOP $(cat /run/dropbear.pid)' "
                  "</dev/null >/dev/null 2>&1 &")
    assert out["exitStatus"] == 0, out
    deadline = time.monotonic() + 30
    while banner_within(ip, 1.0):
        assert time.monotonic() < deadline, "dropbear still answers 30 s after SIGSTOP"
        time.sleep(0.2)  # poll interval

    listed, took = timed(lambda: orch.instances(set_name))
    print(f"list-instances with a hung sshd: {took:.1f}s")
    assert took <= 2 * PROBE_TIMEOUT + 5, took
    by_id = {i["instanceId"]: i for i in listed}
    assert by_id[hung]["healthState"] in ("Unknown", "Unhealthy"), by_id[hung]
    assert by_id[1]["healthState"] == "Healthy", by_id[1]

    (hung_view, took) = timed(lambda: orch.view(set_name, hung))
    assert took <= 2 * PROBE_TIMEOUT + 5, took
    last = hung_view["lastProbe"]
    assert last["kind"] == "unreachable" and last["exitStatus"] is None, last
    assert re.search(r"within 5s", last["error"]), last
    print(f"last probe of the hung instance: {last}")

    # ACPI still works with sshd stopped: restart stops it gracefully and boots it again
    proc, took = timed(lambda: orch.run("vmss", "restart", "--name", set_name,
                                        "--instance-ids", str(hung), timeout=240))
    print(f"restart of the hung instance: {took:.1f}s")
    assert f"{set_name}-{hung}: stopping" in proc.stderr, proc.stderr
    assert "no ACPI shutdown" not in proc.stderr, proc.stderr  # graceful, not destroyed
    assert banner_within(ip, 5.0)
    by_id = {i["instanceId"]: i for i in orch.instances(set_name)}
    assert by_id[hung]["healthState"] == "Healthy" and by_id[1]["healthState"] == "Healthy", by_id
    assert guest_version(orch, set_name, hung) == "1"
    assert_exactly(set_name, [0, 1])


# --- 4. a VM destroyed behind the controller's back mid-upgrade ---------------------------------
def test_vm_destroyed_mid_batch_faults_next_batch_then_controller_restarts_it(
        orch: Orch, set_name: str) -> None:
    # 0 unhealthy allowed before a batch: an instance lost during batch 1 stops the upgrade
    create(orch, set_name, 3, "--upgrade-policy-mode", "Rolling",
           "--max-batch-instance-percent", "34", "--max-unhealthy-instance-percent", "0")
    update = Streamed(orch, "vmss", "update", "--name", set_name, "--image", "tiny:2")
    try:
        batch = int(update.wait_for(rf"{set_name}: batch 1: instances (\d+) \(in place\)",
                                    timeout=120)[1])
        victim = max({0, 1, 2} - {batch})
        virsh("destroy", f"{set_name}-{victim}")
        code = update.finish(timeout=240)
    finally:
        update.stop_if_running()
    took = time.monotonic() - update.started
    print(f"update with instance {victim} destroyed: exit {code} after {took:.1f}s")
    assert code == 1, update.text
    assert "Faulted" in update.text, update.text

    status = latest(orch, set_name)
    assert status["runningStatus"]["code"] == "Faulted", status
    assert "1 of 3 instances are unhealthy before the next batch" in status["error"]["message"]
    assert [b["instances"] for b in status["batches"]] == [[batch]], status
    assert status["batches"][0]["succeeded"] == [batch], status

    by_id = {i["instanceId"]: i for i in orch.instances(set_name)}
    assert by_id[victim]["powerState"] == "stopped", by_id[victim]
    assert by_id[victim]["healthState"] == "Unknown", by_id[victim]
    assert by_id[batch]["image"] == "tiny:2" and by_id[batch]["healthState"] == "Healthy"
    untouched = ({0, 1, 2} - {batch, victim}).pop()
    assert by_id[untouched]["image"] == "tiny:1" and by_id[untouched]["healthState"] == "Healthy"

    proc, took = timed(lambda: controller_once(orch))
    print(f"controller run --once: {took:.1f}s")
    assert f"starting instances [{victim}]" in proc.stderr, proc.stderr
    by_id = {i["instanceId"]: i for i in orch.instances(set_name)}
    assert by_id[victim]["powerState"] == "running", by_id[victim]
    assert by_id[victim]["healthState"] == "Healthy", by_id[victim]
    # the controller does not restart a Faulted upgrade on its own: the user decides
    assert by_id[victim]["image"] == "tiny:1" and by_id[untouched]["image"] == "tiny:1"
    assert latest(orch, set_name)["runningStatus"]["code"] == "Faulted"
    assert guest_version(orch, set_name, victim) == "1"
    assert_exactly(set_name, [0, 1, 2])


# --- 5. libvirtd restarted in the middle of an upgrade --------------------------------------------
def _lab_libvirtd_pid() -> int:
    """The lab's libvirtd (the tests run inside `orch lab exec`, which names the lab's state)."""
    lab_state = os.environ["ORCH_STATE_DIR"]
    with open(os.path.join(lab_state, "lab", "libvirtd.pid")) as fh:
        return int(fh.read().strip())


def test_libvirtd_restarted_mid_upgrade_is_ridden_out(orch: Orch, set_name: str) -> None:
    create(orch, set_name, 2, "--upgrade-policy-mode", "Rolling",
           "--max-batch-instance-percent", "50", "--max-unhealthy-instance-percent", "50")
    update = Streamed(orch, "vmss", "update", "--name", set_name, "--image", "tiny:2")
    try:
        update.wait_for(rf"{set_name}: batch 2: ", timeout=120)  # batch 2 acts on libvirt now
        pid = _lab_libvirtd_pid()
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{pid}") and "Z" not in _proc_state(pid):
            assert time.monotonic() < deadline, "libvirtd did not stop"
        down_at = time.monotonic()
        # batch 2 now meets a daemon that is gone; it comes back a few seconds later
        while time.monotonic() - down_at < 3:
            if update.proc.poll() is not None:
                break
            time.sleep(0.2)  # the outage itself: deliberately a few seconds long
        up = subprocess.run([ORCH, "lab", "up", "-o", "json"], capture_output=True, text=True,
                            timeout=120, check=False)
        assert up.returncode == 0, up.stderr
        code = update.finish(timeout=300)
    finally:
        update.stop_if_running()
    print(f"update across a libvirtd restart: exit {code} after "
          f"{time.monotonic() - update.started:.1f}s")
    assert code == 0, update.text
    assert "libvirt unavailable" in update.text, update.text  # the outage was met, and waited out
    status = latest(orch, set_name)
    assert status["runningStatus"]["code"] == "Completed", status
    for inst in orch.instances(set_name):
        assert (inst["image"], inst["healthState"]) == ("tiny:2", "Healthy"), inst
        assert guest_version(orch, set_name, inst["instanceId"]) == "2"
    assert_exactly(set_name, [0, 1])


def _proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


# --- 6. libvirt changed behind the controller's back: libvirt's objects are the facts -----------
FIND_DATA_DISK = ('dev=; for d in /sys/block/vd*; do '
                  '[ "$(cat "$d/serial" 2>/dev/null)" = orch-lun0 ] && dev=/dev/${d##*/}; done; '
                  '[ -n "$dev" ] || { echo "no disk with serial orch-lun0" >&2; exit 3; }; ')
MOUNT_DATA = FIND_DATA_DISK + ("mkdir -p /mnt/data && { grep -q ' /mnt/data ' /proc/mounts || "
                               'mount -t ext2 "$dev" /mnt/data; } && ')


def disks_of(set_name: str, instance_id: int) -> list[str]:
    """An instance's volumes but its console log, which virsh lists only once libvirt has
    looked at the pool again since virtlogd made it (any listing or refresh may be that)."""
    return sorted(v for v in libvirt_objects(f"{set_name}-{instance_id}-")["volumes"]
                  if not v.endswith("-console.log"))


def test_undefined_domain_is_defined_again_on_its_disks_and_leftovers_go(
        orch: Orch, set_name: str) -> None:
    create(orch, set_name, 2, "--upgrade-policy-mode", "Manual", "--data-disk-sizes-gb", "1")
    out = orch.sh(set_name, 1, FIND_DATA_DISK + 'mkfs.ext2 -q "$dev" >/dev/null && '
                  + MOUNT_DATA + "echo data > /mnt/data/kept && "
                  "echo os > /root/kept && sync")
    assert out["exitStatus"] == 0, out
    volumes_before = disks_of(set_name, 1)
    # by hand: instance 1's domain undefined (its disks stay), and a volume of an instance
    # the set never had, as a lost store row would leave
    virsh("destroy", f"{set_name}-1")
    virsh("undefine", f"{set_name}-1")
    virsh("vol-create-as", "orchlab", f"{set_name}-9-os0.qcow2", "1M", "--format", "qcow2")

    proc, took = timed(lambda: controller_once(orch))
    print(f"controller run --once: {took:.1f}s")
    assert f"{set_name}-1: its domain is gone from libvirt" in proc.stderr, proc.stderr
    assert f"{set_name}: removing what no instance owns: 1 volume(s)" in proc.stderr, proc.stderr
    by_id = {i["instanceId"]: i for i in orch.instances(set_name)}
    assert by_id[1]["powerState"] == "running" and by_id[1]["healthState"] == "Healthy", by_id
    out = orch.sh(set_name, 1, MOUNT_DATA + "cat /mnt/data/kept /root/kept")
    assert (out["exitStatus"], out["stdout"].split()) == (0, ["data", "os"]), out
    assert disks_of(set_name, 1) == volumes_before  # the very same disks
    assert libvirt_objects(f"{set_name}-9-")["volumes"] == []
    assert sorted(libvirt_objects(f"{set_name}-")["domains"]) == [f"{set_name}-0",
                                                                  f"{set_name}-1"]
