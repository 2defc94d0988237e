"""Real VMs on three simulated libvirt hosts (`orch lab up --hosts 3`): a Rolling set of 6
spread 2/2/2 over fault domains fd-1..fd-3, rolled to tiny:2 in place with 34 % batches while
libvirt is watched on every host (never instances of two hosts down at once), VERSION_ID read
over SSH in each, then deleted leaving nothing on any host.

Its own state dir (the other real-VM tests keep one host); it ends with the lab as it found
it (single host) whatever happens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Orch, state_dir_with

pytestmark = pytest.mark.vm

LAB_STATE_DIR = Path(os.environ.get("ORCH_STATE_DIR", "/var/lib/orchestrator"))
ORCH = str(Path(sys.executable).with_name("orch"))
VERSION = ". /etc/os-release && echo $VERSION_ID"


def lab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ORCH, "--state-dir", str(LAB_STATE_DIR), "lab", *args, "-o", "json"],
                          capture_output=True, text=True, timeout=300, check=True)


def virsh(uri: str, *args: str) -> str:
    return subprocess.run(["virsh", "-q", "-c", uri, *args], capture_output=True, text=True,
                          timeout=60, check=True).stdout


@pytest.fixture(scope="module")
def hosts() -> Iterator[list[dict[str, str]]]:
    if os.environ.get("ORCH_IN_LAB") != "1":
        pytest.fail("real-VM tests run inside the lab: `make test`")
    lab("up", "--hosts", "3")
    try:
        found = json.loads(lab("hosts").stdout)
        assert [h["name"] for h in found] == ["lab-1", "lab-2", "lab-3"], found
        assert all(h["up"] for h in found), found
        yield found
    finally:
        lab("up", "--hosts", "0")


@pytest.fixture
def orch3(hosts: list[dict[str, str]]) -> Iterator[Orch]:
    with state_dir_with(("tiny", "--version", "1"), ("tiny", "--version", "2"),
                        prefix="orch-vmhosts-") as o:
        for h in hosts:
            o.run("host", "add", "--name", h["name"], "--uri", h["uri"], "--fault-domain",
                  h["faultDomain"], "--network", h["network"], "--pool", h["pool"])
        yield o


def running_per_host(hosts: list[dict[str, str]], prefix: str) -> dict[str, int]:
    return {h["name"]: sum(1 for d in virsh(h["uri"], "list", "--name", "--state-running").split()
                           if d.startswith(prefix)) for h in hosts}


def held_per_host(hosts: list[dict[str, str]], prefix: str) -> dict[str, list[str]]:
    out = {}
    for h in hosts:
        domains = [d for d in virsh(h["uri"], "list", "--all", "--name").split()
                   if d.startswith(prefix)]
        volumes = [line.split()[0] for line in virsh(h["uri"], "vol-list", h["pool"]).splitlines()
                   if line.split() and line.split()[0].startswith(prefix)]
        dhcp = [line for line in virsh(h["uri"], "net-dumpxml", h["network"]).splitlines()
                if "<host " in line and f"name='{prefix}" in line]
        out[h["name"]] = domains + volumes + dhcp
    return out


def test_rolling_over_three_hosts_never_takes_two_fault_domains_down(
        orch3: Orch, hosts: list[dict[str, str]], record_property: object) -> None:
    name = orch3.new_set_name()
    started = time.monotonic()
    orch3.run("vmss", "create", "--name", name, "--image", "tiny:1", "--instance-count", "6",
              "--upgrade-policy-mode", "Rolling", "--max-batch-instance-percent", "34",
              "--max-unhealthy-instance-percent", "34", timeout=400)
    created = time.monotonic() - started
    listed = orch3.instances(name)
    assert Counter(i["host"] for i in listed) == {"lab-1": 2, "lab-2": 2, "lab-3": 2}, listed
    assert {i["faultDomain"] for i in listed} == {"fd-1", "fd-2", "fd-3"}
    assert {i["healthState"] for i in listed} == {"Healthy"}, listed
    assert running_per_host(hosts, f"{name}-") == {"lab-1": 2, "lab-2": 2, "lab-3": 2}

    # watch libvirt on every host while the upgrade runs: a host is "down" when it runs fewer
    # of the set's domains than it holds
    samples: list[dict[str, int]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            samples.append(running_per_host(hosts, f"{name}-"))
            stop.wait(0.3)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        began = time.monotonic()
        orch3.run("vmss", "update", "--name", name, "--image", "tiny:2", timeout=600)
        rolled = time.monotonic() - began
    finally:
        stop.set()
        watcher.join(timeout=30)
    down = [s for s in samples if sum(1 for n in s.values() if n < 2) >= 2]
    assert samples and not down, down
    assert any(sum(1 for n in s.values() if n < 2) == 1 for s in samples), "no batch was seen"

    status = orch3.json("vmss", "rolling-upgrade", "get-latest", "--name", name)
    assert status["runningStatus"]["code"] == "Completed", status
    by_id = {i["instanceId"]: i for i in orch3.instances(name)}
    for batch in status["batches"]:
        assert len({by_id[i]["faultDomain"] for i in batch["instances"]}) == 1, status["batches"]
    for inst in by_id.values():
        assert inst["image"] == "tiny:2" and inst["healthState"] == "Healthy", inst
        out = orch3.sh(name, inst["instanceId"], VERSION)
        assert (out["exitStatus"], out["stdout"].strip()) == (0, "2"), out
    print(f"3 hosts: create of 6 {created:.1f}s, rolling upgrade {rolled:.1f}s, "
          f"{len(samples)} samples")
    record_property("hosts3_create_seconds", round(created, 1))  # type: ignore[operator]
    record_property("hosts3_roll_seconds", round(rolled, 1))  # type: ignore[operator]

    orch3.run("vmss", "delete", "--name", name)
    assert held_per_host(hosts, f"{name}-") == {"lab-1": [], "lab-2": [], "lab-3": []}


def test_a_host_whose_libvirtd_stops_mid_upgrade_is_waited_for_then_finished(
        orch3: Orch, hosts: list[dict[str, str]]) -> None:
    name = orch3.new_set_name()
    orch3.run("vmss", "create", "--name", name, "--image", "tiny:1", "--instance-count", "3",
              "--upgrade-policy-mode", "Rolling", "--max-batch-instance-percent", "34",
              "--max-unhealthy-instance-percent", "34", timeout=400)
    on = {i["host"]: i["instanceId"] for i in orch3.instances(name)}
    assert sorted(on) == ["lab-1", "lab-2", "lab-3"], on
    update = subprocess.Popen([ORCH, "--state-dir", str(orch3.state_dir), "vmss", "update",
                               "--name", name, "--image", "tiny:2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert update.stderr is not None
        for line in update.stderr:  # the first batch (fd-1, lab-1) has started
            if f"{name}: batch 1:" in line:
                break
        pid = next(h for h in json.loads(lab("hosts").stdout)
                   if h["name"] == "lab-2")["libvirtdPid"]
        os.kill(pid, 9)
        started = time.monotonic()
        _, err = update.communicate(timeout=300)
        took = time.monotonic() - started
    finally:
        if update.poll() is None:
            update.kill()
            update.wait(timeout=30)
    assert update.returncode == 1, err
    assert "paused: host lab-2 does not answer" in err, err
    print(f"update returned {took:.1f}s after lab-2's libvirtd was killed")
    assert took < 120, took
    status = orch3.json("vmss", "rolling-upgrade", "get-latest", "--name", name)
    assert status["runningStatus"]["code"] == "RollingForward", status
    listed = {i["instanceId"]: i for i in orch3.instances(name)}
    assert listed[on["lab-2"]]["powerState"] == "unknown", listed
    assert {listed[on[h]]["image"] for h in ("lab-1", "lab-3")} == {"tiny:2"}, listed

    lab("up")  # the host's daemon comes back; its guest kept running
    proc = orch3.run("controller", "run", "--once", "-o", "json", timeout=400)
    assert "resuming an interrupted rolling upgrade" in proc.stderr, proc.stderr
    status = orch3.json("vmss", "rolling-upgrade", "get-latest", "--name", name)
    assert status["runningStatus"]["code"] == "Completed", status
    for inst in orch3.instances(name):
        assert inst["image"] == "tiny:2" and inst["healthState"] == "Healthy", inst
        out = orch3.sh(name, inst["instanceId"], VERSION)
        assert out["stdout"].strip() == "2", out
    orch3.run("vmss", "delete", "--name", name)
    assert held_per_host(hosts, f"{name}-") == {"lab-1": [], "lab-2": [], "lab-3": []}


def copies_per_host(hosts: list[dict[str, str]]) -> dict[str, set[str]]:
    """The image copies (``image-<sha256>.*`` volumes) in each host's own pool."""
    return {h["name"]: {line.split()[0] for line in virsh(h["uri"], "vol-list", h["pool"]).splitlines()
                        if line.split() and line.split()[0].startswith("image-")} for h in hosts}


def copy_names(orch: Orch, ref: str) -> set[str]:
    manifest = orch.json("image", "show", ref)["manifest"]
    return {f"image-{sha}.{'qcow2' if key == 'disk' else 'raw'}"
            for key, sha in manifest["sha256"].items()}


def test_a_max_surge_roll_over_three_hosts_leaves_nothing_behind_and_copies_images(
        orch3: Orch, hosts: list[dict[str, str]]) -> None:
    name = orch3.new_set_name()
    orch3.run("vmss", "create", "--name", name, "--image", "tiny:1", "--instance-count", "3",
              "--upgrade-policy-mode", "Rolling", "--max-batch-instance-percent", "34",
              "--max-unhealthy-instance-percent", "34", "--max-surge", "true", timeout=400)
    before = {i["instanceId"]: i for i in orch3.instances(name)}
    assert sorted(i["host"] for i in before.values()) == ["lab-1", "lab-2", "lab-3"], before
    tiny1, tiny2 = copy_names(orch3, "tiny:1"), copy_names(orch3, "tiny:2")
    # each host got its own verified copy of tiny:1 in its own pool, on first use
    for held in copies_per_host(hosts).values():
        assert tiny1 <= held, (tiny1, held)

    proc = orch3.run("vmss", "update", "--name", name, "--image", "tiny:2", timeout=600)
    assert proc.stderr.count("copying tiny:2 disk") == 3, proc.stderr  # once per host
    status = orch3.json("vmss", "rolling-upgrade", "get-latest", "--name", name)
    assert status["runningStatus"]["code"] == "Completed", status
    after = {i["instanceId"]: i for i in orch3.instances(name)}
    assert not set(after) & set(before), (before, after)  # surge: new instances replaced them
    # replacements in their old instances' fault domains
    assert sorted(i["faultDomain"] for i in after.values()) == ["fd-1", "fd-2", "fd-3"], after
    for inst in after.values():
        assert inst["image"] == "tiny:2" and inst["healthState"] == "Healthy", inst
        out = orch3.sh(name, inst["instanceId"], VERSION)
        assert out["stdout"].strip() == "2", out
    held = held_per_host(hosts, f"{name}-")
    live = {i["name"] for i in after.values()}
    for host, objects in held.items():
        leftover = [o for o in objects if not any(n in o for n in live)]
        assert leftover == [], (host, leftover)  # nothing of the old instances on any host

    orch3.run("vmss", "delete", "--name", name)
    assert held_per_host(hosts, f"{name}-") == {"lab-1": [], "lab-2": [], "lab-3": []}
    # the copies outlive the set; deleting an image takes its unshared copies off every host
    orch3.run("image", "delete", "tiny:1")
    for host, held_now in copies_per_host(hosts).items():
        assert tiny2 <= held_now, (host, held_now)
        assert not (tiny1 - tiny2) & held_now, (host, held_now)
