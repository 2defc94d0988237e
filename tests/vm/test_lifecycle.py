"""Scale-set lifecycle on real tiny VMs: create, look inside, scale, stop/start, delete."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from .conftest import Orch, libvirt_objects, record_boots, virsh

pytestmark = pytest.mark.vm


def test_lifecycle_on_real_vms(orch: Orch,
                               record_property: Callable[[str, object], None]) -> None:
    name = orch.new_set_name()
    started = time.monotonic()
    created = orch.run("vmss", "create", "--name", name, "--image", "tiny:1",
                       "--instance-count", "2", "--data-disk-sizes-gb", "1",
                       "--upgrade-policy-mode", "Rolling")
    create_seconds = time.monotonic() - started
    print(f"create of 2 to all Healthy: {create_seconds:.1f}s")
    record_property("create_wall_seconds", round(create_seconds, 1))
    assert sorted(record_boots(record_property, created.stderr, name)) == [0, 1], created.stderr

    instances = orch.json("vmss", "list-instances", "--name", name)
    assert [i["instanceId"] for i in instances] == [0, 1]
    assert {i["healthState"] for i in instances} == {"Healthy"}
    assert {i["powerState"] for i in instances} == {"running"}
    assert all(i["latestModelApplied"] and i["image"] == "tiny:1" for i in instances)

    # inside each VM: the image's version, the seed's hostname, the data disk, the address
    for inst in instances:
        out = orch.sh(name, inst["instanceId"],
                      ". /etc/os-release; echo $VERSION_ID; hostname; "
                      "cat /sys/block/vd*/serial; echo; ip -4 -o addr show eth0")
        assert out["exitStatus"] == 0, out
        lines = out["stdout"].splitlines()
        assert lines[0] == "1"
        assert lines[1] == inst["name"]
        assert "orch-lun0" in out["stdout"]  # the 1 GiB data disk, by its serial
        assert f"inet {inst['ipAddress']}/" in out["stdout"]

    view = orch.json("vmss", "get-instance-view", "--name", name, "--instance-id", "0")
    assert view["healthState"] == "Healthy"
    assert view["lastProbe"]["exitStatus"] == 0 and view["lastProbe"]["latencyMs"] is not None

    # scale 2 -> 3 -> 1: a new id, then the highest ids go
    orch.run("vmss", "scale", "--name", name, "--new-capacity", "3")
    instances = orch.json("vmss", "list-instances", "--name", name)
    assert [i["instanceId"] for i in instances] == [0, 1, 2]
    assert {i["healthState"] for i in instances} == {"Healthy"}
    assert orch.sh(name, 2, "hostname")["stdout"].strip() == f"{name}-2"
    orch.run("vmss", "scale", "--name", name, "--new-capacity", "1")
    assert [i["instanceId"] for i in orch.json("vmss", "list-instances", "--name", name)] == [0]
    left = libvirt_objects(f"{name}-")
    assert left["domains"] == [f"{name}-0"]
    assert len(left["hosts"]) == 1

    # stop (graceful ACPI) and start: the same VM, a new boot, healthy again
    boot_id = orch.sh(name, 0, "cat /proc/sys/kernel/random/boot_id")["stdout"].strip()
    t0 = time.monotonic()
    orch.run("vmss", "stop", "--name", name, "--instance-ids", "0")
    stop_seconds = time.monotonic() - t0
    assert virsh("domstate", f"{name}-0").strip() == "shut off"
    assert stop_seconds < 30, f"ACPI shutdown took {stop_seconds:.1f}s: the guest ignored it?"
    stopped = orch.json("vmss", "list-instances", "--name", name)[0]
    assert stopped["powerState"] == "stopped"
    orch.run("vmss", "start", "--name", name, "--instance-ids", "0")
    again = orch.sh(name, 0, "cat /proc/sys/kernel/random/boot_id; . /etc/os-release; echo $VERSION_ID")
    new_boot_id, version = again["stdout"].split()
    assert new_boot_id != boot_id and version == "1"

    # delete leaves no domain, volume or DHCP reservation
    orch.run("vmss", "delete", "--name", name)
    assert libvirt_objects(f"{name}-") == {"domains": [], "volumes": [], "hosts": []}
    assert orch.run("vmss", "show", "--name", name, check=False).returncode == 2


def test_broken_image_is_unhealthy_while_ssh_works(orch: Orch) -> None:
    name = orch.new_set_name()
    proc = orch.run("vmss", "create", "--name", name, "--image", "tiny:3", "--instance-count", "1",
                    "--health-probe-grace-period", "20", check=False)
    assert proc.returncode == 1, proc.stderr
    assert f"{name}-0 Unhealthy" in proc.stderr and "health command exit 1" in proc.stderr
    # SSH itself works: the instance answers, only its health endpoint fails
    out = orch.sh(name, 0, ". /etc/os-release; echo $VERSION_ID")
    assert out["exitStatus"] == 0 and out["stdout"].strip() == "3"
    view = orch.json("vmss", "get-instance-view", "--name", name, "--instance-id", "0")
    assert view["healthState"] == "Unhealthy" and view["lastProbe"]["exitStatus"] == 1
    orch.run("vmss", "delete", "--name", name)
    assert libvirt_objects(f"{name}-") == {"domains": [], "volumes": [], "hosts": []}
