"""Upgrades on real tiny VMs, checked inside the guests over SSH: rolling in place (data disk
kept, identity kept), rolling with MaxSurge (new ids, nothing left behind), Manual with
``update-instances``, Automatic, reimage, and a broken image that faults a rolling upgrade
(with and without rollback).

Each test boots at most 3 instances (the host has 2 cores and runs them under TCG); the
``set_name`` fixture deletes its set afterwards and checks that libvirt holds nothing of it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator

import pytest

from tests.world import snapshot

from .conftest import Orch, libvirt_objects, record_boots

pytestmark = pytest.mark.vm

NOTHING: dict[str, list[str]] = {"domains": [], "volumes": [], "hosts": []}
Record = Callable[[str, object], None]  # pytest's record_property: figures for the nightly report

# The data disk is found by the serial the controller gives it, not by a guessed vdX name.
FIND_DATA_DISK = ('dev=; for d in /sys/block/vd*; do '
                  '[ "$(cat "$d/serial" 2>/dev/null)" = orch-lun0 ] && dev=/dev/${d##*/}; done; '
                  '[ -n "$dev" ] || { echo "no disk with serial orch-lun0" >&2; exit 3; }; ')
# mounted once per boot: after a reboot the mount is gone and must be made again
MOUNT_DATA = FIND_DATA_DISK + ("mkdir -p /mnt/data && { grep -q ' /mnt/data ' /proc/mounts || "
                               "mount -t ext2 \"$dev\" /mnt/data; } && ")
VERSION_AND_BOOT = ". /etc/os-release; echo $VERSION_ID; cat /proc/sys/kernel/random/boot_id"
PROGRESS = re.compile(r"^\[\s*(?P<t>[0-9.]+)s\] (?P<msg>.*)$")


@pytest.fixture
def set_name(orch: Orch) -> Iterator[str]:
    """A fresh set name; afterwards the set is deleted and libvirt must hold nothing of it."""
    name = orch.new_set_name()
    yield name
    orch.run("vmss", "delete", "--name", name, check=False)
    assert libvirt_objects(f"{name}-") == NOTHING


def sh_ok(orch: Orch, set_name: str, instance_id: int, script: str) -> str:
    out = orch.sh(set_name, instance_id, script)
    assert out["exitStatus"] == 0, f"{set_name}-{instance_id}: {script!r} -> {out}"
    stdout: str = out["stdout"]
    return stdout


def version_and_boot(orch: Orch, set_name: str, instance_id: int) -> tuple[str, str]:
    """VERSION_ID of the image the guest runs, and the id of its current boot."""
    version, boot = sh_ok(orch, set_name, instance_id, VERSION_AND_BOOT).split()
    return version, boot


def progress_events(stderr: str) -> list[tuple[float, str]]:
    """The ``[  12.3s] message`` progress lines of a command, in order."""
    events = []
    for line in stderr.splitlines():
        m = PROGRESS.match(line)
        if m:
            events.append((float(m["t"]), m["msg"]))
    return events


def instance_volumes(set_name: str, instance_id: int) -> list[str]:
    """Lab-pool volumes of one instance (``<set>-<id>-...``, so ``-1`` never matches ``-10``)."""
    return libvirt_objects(f"{set_name}-{instance_id}-")["volumes"]


def create(orch: Orch, set_name: str, count: int, *flags: str) -> None:
    orch.run("vmss", "create", "--name", set_name, "--image", "tiny:1",
             "--instance-count", str(count), *flags)


# --- Rolling, in place; then reimage --------------------------------------------------------
def test_rolling_in_place_keeps_identity_and_data_then_reimage(orch: Orch, set_name: str,
                                                               record_property: Record) -> None:
    create(orch, set_name, 3, "--upgrade-policy-mode", "Rolling",
           "--max-batch-instance-percent", "34", "--max-unhealthy-instance-percent", "34",
           "--data-disk-sizes-gb", "1")
    before = {i["instanceId"]: i for i in orch.instances(set_name)}
    assert sorted(before) == [0, 1, 2]
    macs = {i: orch.view(set_name, i)["macAddress"] for i in before}
    boots = {}
    for i, inst in before.items():
        version, boots[i] = sh_ok(orch, set_name, i, FIND_DATA_DISK + 'mkfs.ext2 -q "$dev" >/dev/null && '
                                  + MOUNT_DATA + f'echo {inst["name"]} > /mnt/data/owner && sync && '
                                  + VERSION_AND_BOOT).split()
        assert version == "1"

    started = time.monotonic()
    proc = orch.run("vmss", "update", "--name", set_name, "--image", "tiny:2")
    record_property("upgrade_in_place_wall_seconds", round(time.monotonic() - started, 1))
    assert sorted(record_boots(record_property, proc.stderr, set_name)) == [0, 1, 2], proc.stderr

    after = {i["instanceId"]: i for i in orch.instances(set_name)}
    assert sorted(after) == [0, 1, 2]
    for i, inst in after.items():
        assert (inst["name"], inst["ipAddress"]) == (before[i]["name"], before[i]["ipAddress"])
        assert orch.view(set_name, i)["macAddress"] == macs[i]
        assert inst["latestModelApplied"] is True and inst["image"] == "tiny:2"
        assert inst["healthState"] == "Healthy" and inst["modelGeneration"] == 2
        # the new image, a new boot, and the same data disk (mounted again after the reboot)
        # still holding what was written
        version, boot, owner = sh_ok(orch, set_name, i, MOUNT_DATA + VERSION_AND_BOOT
                                     + "; cat /mnt/data/owner").split()
        assert (version, owner) == ("2", inst["name"]) and boot != boots[i]
        # the previous OS disk went once the instance proved healthy: one OS disk, no leak
        assert len([v for v in instance_volumes(set_name, i) if "-os" in v]) == 1

    status = orch.json("vmss", "rolling-upgrade", "get-latest", "--name", set_name)
    assert status["runningStatus"]["code"] == "Completed"
    assert status["progress"]["successfulInstanceCount"] == 3
    assert status["progress"]["failedInstanceCount"] == 0
    assert [len(b["instances"]) for b in status["batches"]] == [1, 1, 1]
    assert sorted(b["instances"][0] for b in status["batches"]) == [0, 1, 2]

    # batches of 1 in place: an instance goes down only after the previous one is Healthy
    order = [(m.split(":")[0], "down" if "applying generation" in m else "up")
             for _, m in progress_events(proc.stderr)
             if m.startswith(f"{set_name}-") and ("applying generation" in m or ": Healthy" in m)]
    assert len(order) == 6, proc.stderr
    for n in range(0, 6, 2):
        assert order[n][1] == "down" and order[n + 1] == (order[n][0], "up"), order

    # reimage of 0: OS disk back to the image (local data lost), data disk, IP, MAC kept,
    # a new host key; the others are not touched
    sh_ok(orch, set_name, 0, MOUNT_DATA + "echo here > /root/marker && echo kept > /mnt/data/kept && sync")
    key_before = orch.view(set_name, 0)["hostKey"]
    _, boot1 = version_and_boot(orch, set_name, 1)
    orch.run("vmss", "reimage", "--name", set_name, "--instance-ids", "0")
    after0 = orch.view(set_name, 0)
    assert after0["hostKey"] != key_before
    assert after0["ipAddress"] == before[0]["ipAddress"] and after0["macAddress"] == macs[0]
    assert after0["healthState"] == "Healthy"
    inside = sh_ok(orch, set_name, 0, "ls /root/marker 2>/dev/null; echo end; "
                   + MOUNT_DATA + "cat /mnt/data/kept /mnt/data/owner; " + VERSION_AND_BOOT).split()
    assert inside[:4] == ["end", "kept", f"{set_name}-0", "2"], inside
    assert version_and_boot(orch, set_name, 1)[1] == boot1

    orch.run("vmss", "delete", "--name", set_name)
    assert libvirt_objects(f"{set_name}-") == NOTHING


# --- Rolling with MaxSurge -------------------------------------------------------------------
def test_rolling_surge_replaces_instances_and_leaves_nothing(orch: Orch, set_name: str,
                                                             record_property: Record) -> None:
    create(orch, set_name, 3, "--upgrade-policy-mode", "Rolling", "--max-surge", "true",
           "--max-batch-instance-percent", "34", "--max-unhealthy-instance-percent", "34")
    assert [i["instanceId"] for i in orch.instances(set_name)] == [0, 1, 2]
    # the dry run of a surge in the lab (its pool and network are not libvirt's defaults)
    plan = json.loads(orch.run("vmss", "plan", "--name", set_name, "--image", "tiny:2",
                               "--max-surge", "true", "-o", "json").stdout)
    # the reason, notes and assumptions first: pytest cuts a long dict short
    assert plan["outcome"] == "Completed" and plan["maxSurge"] is True, (
        plan["outcome"], plan["error"], plan["notes"], plan["assumptions"], plan["batches"])
    assert [b["action"] for b in plan["batches"]] == ["surge"] * 3, plan

    started = time.monotonic()
    proc = orch.run("vmss", "update", "--name", set_name, "--image", "tiny:2")
    record_property("upgrade_surge_wall_seconds", round(time.monotonic() - started, 1))
    assert sorted(record_boots(record_property, proc.stderr, set_name)) == [3, 4, 5], proc.stderr

    now = orch.instances(set_name)
    assert [i["instanceId"] for i in now] == [3, 4, 5]
    assert all(i["latestModelApplied"] and i["healthState"] == "Healthy" for i in now)
    for inst in now:
        assert sh_ok(orch, set_name, inst["instanceId"],
                     VERSION_AND_BOOT + "; hostname").split()[::2] == ["2", inst["name"]]
    status = orch.json("vmss", "rolling-upgrade", "get-latest", "--name", set_name)
    assert status["runningStatus"]["code"] == "Completed" and status["surge"] is True
    assert status["progress"]["successfulInstanceCount"] == 3

    # exactly the new instances in libvirt: their domains, their volumes, their reservations
    left = libvirt_objects(f"{set_name}-")
    new_names = [f"{set_name}-{i}" for i in (3, 4, 5)]
    assert sorted(left["domains"]) == new_names
    assert sorted({v.rsplit("-", 1)[0] for v in left["volumes"]}) == new_names
    assert len(left["hosts"]) == 3
    assert all(any(f"name='{n}'" in h for h in left["hosts"]) for n in new_names)

    # surge: an old instance is deleted only after its replacement is Healthy
    events = [m for _, m in progress_events(proc.stderr)]
    for old, new in zip((0, 1, 2), (3, 4, 5), strict=True):
        healthy = next(n for n, m in enumerate(events) if m.startswith(f"{set_name}-{new}: Healthy"))
        deleting = next(n for n, m in enumerate(events) if m == f"{set_name}-{old}: deleting")
        assert healthy < deleting, proc.stderr

    orch.run("vmss", "delete", "--name", set_name)
    assert libvirt_objects(f"{set_name}-") == NOTHING


def test_plan_of_a_surge_in_the_lab_gives_its_verdict_and_changes_nothing(
        orch: Orch, set_name: str) -> None:
    """`vmss plan --max-surge true` of a set made without MaxSurge, as a new user runs it in
    the lab (pool orchlab): the room for a surge batch is judged on the lab's own pool and
    network, and neither the state dir nor libvirt changes."""
    create(orch, set_name, 2, "--upgrade-policy-mode", "Rolling")
    # the plan simulates an instance recorded Unknown as unhealthy; list-instances records
    # what it probes, and on a loaded machine one probe may time out: wait for two Healthy
    deadline = time.monotonic() + 120
    while True:
        listed = orch.instances(set_name)
        if all(i["healthState"] == "Healthy" for i in listed) or time.monotonic() > deadline:
            break
        time.sleep(2)
    ids = [(i["instanceId"], i["image"], i["healthState"]) for i in listed]
    assert ids == [(0, "tiny:1", "Healthy"), (1, "tiny:1", "Healthy")]

    def libvirt_now() -> dict[str, list[str]]:
        # virtlogd's console logs are files in the pool that libvirt lists once the pool is
        # refreshed, as the plan's read of its free space does: not made by the plan
        held = libvirt_objects(f"{set_name}-")
        return {**held, "volumes": [v for v in held["volumes"]
                                    if not v.endswith("-console.log")]}

    # taken after list-instances, which records the probes it makes
    before = (snapshot(orch.state_dir), libvirt_now())

    surge = orch.run("vmss", "plan", "--name", set_name, "--image", "tiny:2",
                     "--max-surge", "true", "-o", "json", check=False)
    assert surge.returncode == 0, surge.stderr
    plan = json.loads(surge.stdout)
    # the reason, notes and assumptions first: pytest cuts a long dict short
    assert plan["outcome"] == "Completed" and plan["maxSurge"] is True, (
        plan["outcome"], plan["error"], plan["notes"], plan["assumptions"], plan["batches"])
    assert [b["action"] for b in plan["batches"]] == ["surge"] * 2, plan
    assert [b["newInstances"] for b in plan["batches"]] == [[2], [3]], plan
    # the command of the report: the image the set already runs, so only the policy changes
    same = orch.run("vmss", "plan", "--name", set_name, "--image", "tiny:1",
                    "--max-surge", "true", "-o", "json", check=False)
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout)["outcome"] == "NothingToDo"

    assert (snapshot(orch.state_dir), libvirt_now()) == before
    shown = orch.json("vmss", "show", "--name", set_name)
    assert shown["generation"] == 1, shown
    assert shown["upgradePolicy"]["rollingUpgradePolicy"]["maxSurge"] is False, shown
    assert [(i["instanceId"], i["image"]) for i in orch.instances(set_name)] == [
        (i, image) for i, image, _ in ids]


# --- Manual, then Automatic --------------------------------------------------------------
def test_manual_waits_for_update_instances_then_automatic_upgrades_all(orch: Orch,
                                                                       set_name: str) -> None:
    create(orch, set_name, 2, "--upgrade-policy-mode", "Manual")
    boots = {i: version_and_boot(orch, set_name, i)[1] for i in (0, 1)}

    orch.run("vmss", "update", "--name", set_name, "--image", "tiny:2")
    assert orch.json("vmss", "show", "--name", set_name)["generation"] == 2
    for inst in orch.instances(set_name):
        assert inst["latestModelApplied"] is False and inst["image"] == "tiny:1"
        # not even restarted
        assert version_and_boot(orch, set_name, inst["instanceId"]) == ("1", boots[inst["instanceId"]])

    orch.run("vmss", "update-instances", "--name", set_name, "--instance-ids", "1")
    by_id = {i["instanceId"]: i for i in orch.instances(set_name)}
    assert by_id[1]["latestModelApplied"] is True and by_id[1]["image"] == "tiny:2"
    assert by_id[1]["healthState"] == "Healthy"
    assert by_id[0]["latestModelApplied"] is False and by_id[0]["image"] == "tiny:1"
    assert version_and_boot(orch, set_name, 1)[0] == "2"
    assert version_and_boot(orch, set_name, 0) == ("1", boots[0])

    # Automatic: a model change reaches every instance at once, the lagging one included.
    # A new version is needed for a model change; building it takes about a second.
    orch.run("image", "build", "tiny", "--version", "4")
    orch.run("vmss", "update", "--name", set_name, "--upgrade-policy-mode", "Automatic",
             "--image", "tiny:4")
    now = orch.instances(set_name)
    assert [i["instanceId"] for i in now] == [0, 1]
    assert all(i["latestModelApplied"] and i["image"] == "tiny:4" for i in now)
    assert all(i["healthState"] == "Healthy" and i["modelGeneration"] == 3 for i in now)
    assert [version_and_boot(orch, set_name, i)[0] for i in (0, 1)] == ["4", "4"]

    orch.run("vmss", "delete", "--name", set_name)
    assert libvirt_objects(f"{set_name}-") == NOTHING


# --- a broken image faults a rolling upgrade -------------------------------------------------
@pytest.fixture(scope="module")
def broken_image(orch: Orch) -> str:
    return "tiny:3"  # built --broken by the session fixture


BROKEN_SET = ("--upgrade-policy-mode", "Rolling", "--max-batch-instance-percent", "34",
              "--max-unhealthy-instance-percent", "34", "--health-probe-grace-period", "20")


def test_broken_image_faults_after_first_batch(orch: Orch, set_name: str, broken_image: str) -> None:
    create(orch, set_name, 3, *BROKEN_SET)
    boots = {i: version_and_boot(orch, set_name, i)[1] for i in (0, 1, 2)}

    proc = orch.run("vmss", "update", "--name", set_name, "--image", broken_image, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "Faulted" in proc.stderr

    status = orch.json("vmss", "rolling-upgrade", "get-latest", "--name", set_name)
    assert status["runningStatus"]["code"] == "Faulted"
    assert status["error"] and status["error"]["message"], status
    assert [b["instances"] for b in status["batches"]] == [[0]]
    assert status["batches"][0]["failed"] == [0]
    assert status["progress"]["failedInstanceCount"] == 1
    assert status["progress"]["successfulInstanceCount"] == 0

    by_id = {i["instanceId"]: i for i in orch.instances(set_name)}
    assert by_id[0]["image"] == broken_image and by_id[0]["healthState"] == "Unhealthy"
    assert version_and_boot(orch, set_name, 0)[0] == "3"  # SSH works, only the health check fails
    for i in (1, 2):
        assert by_id[i]["modelGeneration"] == 1 and by_id[i]["image"] == "tiny:1"
        assert version_and_boot(orch, set_name, i) == ("1", boots[i])

    orch.run("vmss", "delete", "--name", set_name)
    assert libvirt_objects(f"{set_name}-") == NOTHING


def test_broken_image_rolled_back_on_policy_breach(orch: Orch, set_name: str,
                                                   broken_image: str) -> None:
    create(orch, set_name, 3, *BROKEN_SET, "--rollback-on-policy-breach")
    boots = {i: version_and_boot(orch, set_name, i)[1] for i in (0, 1, 2)}

    proc = orch.run("vmss", "update", "--name", set_name, "--image", broken_image, check=False)
    assert proc.returncode == 1, proc.stderr

    status = orch.json("vmss", "rolling-upgrade", "get-latest", "--name", set_name)
    assert status["runningStatus"]["code"] == "Faulted"
    assert [b["instances"] for b in status["batches"]] == [[0]]
    assert status["rollback"] and f"{set_name}-0 Healthy" in status["rollback"], status

    by_id = {i["instanceId"]: i for i in orch.instances(set_name)}
    assert by_id[0]["image"] == "tiny:1" and by_id[0]["healthState"] == "Healthy"
    assert by_id[0]["modelGeneration"] == 1 and by_id[0]["latestModelApplied"] is False
    version, boot0 = version_and_boot(orch, set_name, 0)
    assert version == "1" and boot0 != boots[0]
    for i in (1, 2):
        assert by_id[i]["image"] == "tiny:1" and by_id[i]["healthState"] == "Healthy"
        assert version_and_boot(orch, set_name, i) == ("1", boots[i])
    # the broken OS disk did not stay behind
    assert len([v for v in instance_volumes(set_name, 0) if "-os" in v]) == 1

    orch.run("vmss", "delete", "--name", set_name)
    assert libvirt_objects(f"{set_name}-") == NOTHING
