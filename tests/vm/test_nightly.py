"""The nightly's larger real-VM case (``make nightly`` only; ``make test`` deselects it):
a set of 8 tiny instances created at once, then rolled tiny:1 → tiny:2 in place in batches
of 25% and back tiny:2 → tiny:1 with MaxSurge, checked inside every VM over SSH and in
libvirt after each step.

Each step records its wall time and the boot time of every instance it (re)started with
``record_property``; ``make nightly`` writes them to the JUnit XML and
``scripts/nightly_report.py`` lists them in ``reports/nightly.md``. While an upgrade runs, a
thread counts the set's running domains (``virsh list`` every half second) to check the
availability floor and the surge ceiling as they are seen from libvirt.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Self

import pytest

from .conftest import Orch, assert_exactly, libvirt_objects, record_boots, virsh

pytestmark = [pytest.mark.vm, pytest.mark.nightly]

NOTHING: dict[str, list[str]] = {"domains": [], "volumes": [], "hosts": []}
COUNT = 8
BATCH = 2  # 25% of 8
# Slow hosts (2 cores, TCG) boot 8 guests at once in well under this; a hang still ends.
STEP_TIMEOUT = 1800.0
PROGRESS = re.compile(r"^\[\s*[0-9.]+s\] (?P<msg>.*)$", re.MULTILINE)

Record = Callable[[str, object], None]


@pytest.fixture
def set_name(orch: Orch) -> Iterator[str]:
    """A fresh set name; afterwards the set is deleted and libvirt must hold nothing of it."""
    name = orch.new_set_name()
    yield name
    orch.run("vmss", "delete", "--name", name, check=False, timeout=STEP_TIMEOUT)
    assert libvirt_objects(f"{name}-") == NOTHING


class RunningDomains:
    """Counts the set's running domains when entered and then every half second until
    exit, while a command runs: the least and the most seen."""

    def __init__(self, set_name: str) -> None:
        self.prefix = f"{set_name}-"
        self.least = self.most = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._error: Exception | None = None

    def _running(self) -> int:
        return len([d for d in virsh("list", "--name").split() if d.startswith(self.prefix)])

    def _watch(self) -> None:
        try:
            while not self._done.wait(0.5):  # the poll interval
                n = self._running()
                self.least, self.most = min(self.least, n), max(self.most, n)
        except (subprocess.SubprocessError, OSError) as exc:  # reported by __exit__
            self._error = exc

    def __enter__(self) -> Self:
        self.least = self.most = self._running()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=60)
        if self._error is not None:
            raise AssertionError(f"counting running domains failed: {self._error}")


def timed_run(orch: Orch, *args: str) -> tuple[str, float]:
    """stderr (the progress lines) and wall time of an `orch` command that must succeed."""
    started = time.monotonic()
    proc = orch.run(*args, timeout=STEP_TIMEOUT)
    return proc.stderr, time.monotonic() - started


def os_release_version(orch: Orch, set_name: str, instance_id: int) -> str:
    """VERSION_ID from /etc/os-release, read inside the guest over SSH (run-command)."""
    out = orch.sh(set_name, instance_id, "cat /etc/os-release")
    assert out["exitStatus"] == 0, f"{set_name}-{instance_id}: {out}"
    found = re.search(r'^VERSION_ID="?([^"\n]*)"?$', out["stdout"], re.MULTILINE)
    assert found, f"{set_name}-{instance_id}: no VERSION_ID in {out['stdout']!r}"
    return found[1]


def check_instances(orch: Orch, set_name: str, ids: list[int], image: str,
                    generation: int) -> list[dict[str, Any]]:
    """The set holds exactly ``ids``, all on ``image`` (the guest says so too), Healthy and
    running, and libvirt holds exactly their objects."""
    instances = orch.instances(set_name)
    assert [i["instanceId"] for i in instances] == ids, instances
    for inst in instances:
        assert inst["image"] == image and inst["latestModelApplied"] is True, inst
        assert inst["modelGeneration"] == generation, inst
        assert inst["healthState"] == "Healthy" and inst["powerState"] == "running", inst
        assert os_release_version(orch, set_name, inst["instanceId"]) == image.split(":")[1]
    assert_exactly(set_name, ids)
    return instances


def test_eight_instances_rolled_in_place_then_with_surge(orch: Orch, set_name: str,
                                                         record_property: Record) -> None:
    # --- create 8 at once --------------------------------------------------------------------
    stderr, took = timed_run(orch, "vmss", "create", "--name", set_name, "--image", "tiny:1",
                             "--instance-count", str(COUNT), "--upgrade-policy-mode", "Rolling",
                             "--max-batch-instance-percent", "25",
                             "--max-unhealthy-instance-percent", "25",
                             "--max-unhealthy-upgraded-instance-percent", "25")
    record_property("create_wall_seconds", round(took, 1))
    boots = record_boots(record_property, stderr, set_name)
    print(f"create of {COUNT}: {took:.1f}s; boots {sorted(boots.values())}")
    assert sorted(boots) == list(range(COUNT)), stderr
    before = {i["instanceId"]: i for i in check_instances(orch, set_name, list(range(COUNT)),
                                                          "tiny:1", 1)}

    # --- tiny:1 -> tiny:2 in place, 4 batches of 2 ------------------------------------------
    with RunningDomains(set_name) as running:
        stderr, took = timed_run(orch, "vmss", "update", "--name", set_name, "--image", "tiny:2")
    record_property("upgrade_in_place_wall_seconds", round(took, 1))
    boots = record_boots(record_property, stderr, set_name)
    print(f"in-place upgrade of {COUNT}: {took:.1f}s; running domains seen "
          f"{running.least}..{running.most}")
    assert sorted(boots) == list(range(COUNT)), stderr
    # availability floor as libvirt saw it: never more than a batch down
    assert running.least >= COUNT - BATCH, running.least
    assert running.most == COUNT, running.most
    # and as the progress says: an instance goes down only while fewer than a batch are
    # down (down = "applying generation", up again = "Healthy")
    down: set[str] = set()
    for m in PROGRESS.finditer(stderr):
        msg = m["msg"]
        if not msg.startswith(f"{set_name}-"):
            continue
        name = msg.split(":")[0]
        if "applying generation" in msg:
            down.add(name)
            assert len(down) <= BATCH, (down, stderr)
        elif ": Healthy" in msg:
            down.discard(name)
    assert not down, stderr

    after = check_instances(orch, set_name, list(range(COUNT)), "tiny:2", 2)
    for inst in after:  # in place: same name and address
        old = before[inst["instanceId"]]
        assert (inst["name"], inst["ipAddress"]) == (old["name"], old["ipAddress"])
    status = orch.json("vmss", "rolling-upgrade", "get-latest", "--name", set_name)
    assert status["runningStatus"]["code"] == "Completed", status
    assert status["progress"]["successfulInstanceCount"] == COUNT, status
    assert status["progress"]["failedInstanceCount"] == 0, status
    assert [len(b["instances"]) for b in status["batches"]] == [BATCH] * (COUNT // BATCH)
    assert sorted(i for b in status["batches"] for i in b["instances"]) == list(range(COUNT))

    # --- tiny:2 -> tiny:1 with MaxSurge: new ids 8..15, the old ones go ---------------------
    orch.run("vmss", "update", "--name", set_name, "--max-surge", "true")
    with RunningDomains(set_name) as running:
        stderr, took = timed_run(orch, "vmss", "update", "--name", set_name, "--image", "tiny:1")
    record_property("upgrade_surge_wall_seconds", round(took, 1))
    new_ids = list(range(COUNT, 2 * COUNT))
    boots = record_boots(record_property, stderr, set_name)
    print(f"surge upgrade of {COUNT}: {took:.1f}s; running domains seen "
          f"{running.least}..{running.most}")
    assert sorted(boots) == new_ids, stderr
    # surge: capacity never below COUNT, never more than a batch above it
    assert running.least == COUNT and running.most <= COUNT + BATCH, (running.least, running.most)
    # and as the progress says: an old instance goes only once a replacement is Healthy
    healthy_new = deleted_old = 0
    for m in PROGRESS.finditer(stderr):
        event = re.fullmatch(rf"{re.escape(set_name)}-(\d+): (Healthy after|deleting)\b.*",
                             m["msg"])
        if event is None:
            continue
        if event[2] == "deleting":
            deleted_old += 1
            assert int(event[1]) < COUNT and deleted_old <= healthy_new, stderr
        elif int(event[1]) >= COUNT:
            healthy_new += 1
    assert (healthy_new, deleted_old) == (COUNT, COUNT), stderr

    now = check_instances(orch, set_name, new_ids, "tiny:1", 3)
    for inst in now:
        hostname = orch.sh(set_name, inst["instanceId"], "hostname")["stdout"].strip()
        assert hostname == inst["name"], (hostname, inst)
    status = orch.json("vmss", "rolling-upgrade", "get-latest", "--name", set_name)
    assert status["runningStatus"]["code"] == "Completed" and status["surge"] is True, status
    assert status["progress"]["successfulInstanceCount"] == COUNT, status
    assert [len(b["instances"]) for b in status["batches"]] == [BATCH] * (COUNT // BATCH)
    # a surge batch names the old instances it replaces
    assert sorted(i for b in status["batches"] for i in b["instances"]) == list(range(COUNT))

    # --- delete: nothing left ------------------------------------------------------------
    stderr, took = timed_run(orch, "vmss", "delete", "--name", set_name)
    record_property("delete_wall_seconds", round(took, 1))
    assert libvirt_objects(f"{set_name}-") == NOTHING
