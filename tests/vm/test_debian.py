"""A real cloud image on real VMs: debian-12 (Debian's cloud-init and openssh-server, booting
from its own disk) built in the session's state dir, a set of one on it that must come up
Healthy with the controller's seed, and (nightly) a rolling upgrade from one version to the
next. Figures (build time, image size, boot to Healthy) are recorded as test properties.

Under TCG a Debian boot to "cloud-init done" takes 60-90 s on these machines; the timeouts
are generous but bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import Orch, libvirt_objects, record_boots, virsh

pytestmark = pytest.mark.vm

# a cold build runs mmdebstrap (about 90 s here); a warm one reuses its cached root filesystem
BUILD_TIMEOUT = 1200
BOOT_TIMEOUT = 900
CUSTOM_DATA = """#cloud-config
write_files:
  - path: /etc/orch-test/greeting
    content: "hello from write_files\\n"
    permissions: "0640"
runcmd:
  - "echo runcmd ran as $(id -un) > /var/tmp/orch-runcmd"
"""

RecordProperty = Callable[[str, object], None]


def build_debian(orch: Orch, version: str, record_property: RecordProperty) -> dict[str, Any]:
    """debian-12:VERSION in the session's state dir (once), with its figures recorded."""
    found = orch.run("image", "show", f"debian-12:{version}", "-o", "json", check=False)
    if found.returncode != 0:
        started = time.monotonic()
        built = orch.run("image", "build", "debian-12", "--version", version,
                         timeout=BUILD_TIMEOUT)
        seconds = time.monotonic() - started
        summary = [line for line in built.stderr.splitlines() if " built in " in line]
        assert summary, built.stderr  # the recipe's own line: size, kernel, time
        print(summary[-1].split("] ", 1)[-1])
        record_property("build_seconds", round(seconds, 1))
    image: dict[str, Any] = orch.json("image", "show", f"debian-12:{version}")
    record_property("image_size_mib", image["sizeMiB"])
    return image


def create_one(orch: Orch, tmp_path: Path, record_property: RecordProperty, *, image: str,
               policy: str = "Manual") -> tuple[str, float]:
    """A set of one on ``image`` with CUSTOM_DATA; its name and the create's wall seconds."""
    name = orch.new_set_name()
    custom = tmp_path / "custom-data.yaml"
    custom.write_text(CUSTOM_DATA)
    started = time.monotonic()
    proc = orch.run("vmss", "create", "--name", name, "--image", image, "--instance-count", "1",
                    "--upgrade-policy-mode", policy, "--custom-data", str(custom),
                    timeout=BOOT_TIMEOUT)
    seconds = time.monotonic() - started
    record_boots(record_property, proc.stderr, name)
    return name, seconds


def test_debian_set_comes_up_healthy_with_the_seed(
        orch: Orch, tmp_path: Path, record_property: RecordProperty) -> None:
    image = build_debian(orch, "1", record_property)
    assert image["kernelBoot"] is False and image["sshUser"] == "debian"

    # the model's default memory: the image declares what it needs and the default is enough
    name, boot_seconds = create_one(orch, tmp_path, record_property, image="debian-12:1")
    record_property("boot_to_healthy_seconds", round(boot_seconds, 1))
    print(f"create of 1 debian-12 instance to Healthy: {boot_seconds:.1f}s")
    [inst] = orch.instances(name)
    assert inst["healthState"] == "Healthy" and inst["powerState"] == "running"

    # BIOS boot from its own disk: no kernel in the domain, syslinux's command line in the guest
    xml = virsh("dumpxml", f"{name}-0")
    assert "<kernel>" not in xml and "<boot dev='hd'/>" in xml

    out = orch.sh(name, 0, "cloud-init status; id -un; hostname; cat /proc/cmdline; "
                           ". /etc/orch-image-release; echo version=$ORCH_IMAGE_VERSION; "
                           "sudo cat /etc/orch-test/greeting; stat -c %a /etc/orch-test/greeting; "
                           "cat /var/tmp/orch-runcmd; ls /etc/ssh/ | grep ^ssh_host_; "
                           "sudo cat /etc/ssh/ssh_host_ed25519_key.pub")
    assert out["exitStatus"] == 0, out
    lines = out["stdout"].splitlines()
    assert lines[0] == "status: done", out  # real cloud-init, every module succeeded
    assert lines[1] == "debian"  # the admin key went to the image's default user
    assert lines[2] == f"{name}-0"  # the seed's hostname
    assert "BOOT_IMAGE=/vmlinuz" in lines[3] and "root=UUID=" in lines[3]  # syslinux booted it
    assert lines[4] == "version=1"
    assert lines[5:9] == ["hello from write_files", "640", "runcmd ran as root",
                          "ssh_host_ed25519_key"]
    # only the controller's host key (cloud-init writes it 0600): none generated, none shipped
    assert lines[9] == "ssh_host_ed25519_key.pub"
    view = orch.view(name, 0)
    assert lines[10].split()[:2] == view["hostKey"].split()[:2]  # the pinned key is the one in use
    assert view["lastProbe"]["exitStatus"] == 0

    # the seed is valid cloud-config to cloud-init itself, and nothing it did was an error
    checks = orch.sh(name, 0, "sudo cloud-init schema --system 2>&1 | tail -n 1; "
                              "sudo grep -c -E 'WARNING|ERROR|Traceback' /var/log/cloud-init.log "
                              "|| true")
    assert checks["exitStatus"] == 0, checks
    schema, problems = checks["stdout"].splitlines()
    assert "Valid cloud-config" in schema, checks
    assert problems == "0", orch.sh(name, 0, "sudo grep -E 'WARNING|ERROR' /var/log/cloud-init.log")

    orch.run("vmss", "delete", "--name", name)
    assert libvirt_objects(f"{name}-") == {"domains": [], "volumes": [], "hosts": []}


@pytest.mark.nightly
def test_debian_set_rolls_to_the_next_version(
        orch: Orch, tmp_path: Path, record_property: RecordProperty) -> None:
    build_debian(orch, "1", record_property)
    build_debian(orch, "2", record_property)
    name, _ = create_one(orch, tmp_path, record_property, image="debian-12:1", policy="Rolling")
    before = orch.instances(name)[0]

    started = time.monotonic()
    proc = orch.run("vmss", "update", "--name", name, "--image", "debian-12:2",
                    timeout=BOOT_TIMEOUT)
    record_property("roll_seconds", round(time.monotonic() - started, 1))
    assert record_boots(record_property, proc.stderr, name).keys() == {0}, proc.stderr
    status = orch.json("vmss", "rolling-upgrade", "get-latest", "--name", name)
    assert status["runningStatus"]["code"] == "Completed", status
    assert status["progress"]["successfulInstanceCount"] == 1

    [after] = orch.instances(name)
    assert after["image"] == "debian-12:2" and after["latestModelApplied"]
    assert after["healthState"] == "Healthy"
    # in place: same instance, name and address; a new OS disk on the new image
    assert (after["instanceId"], after["name"], after["ipAddress"]) == (
        before["instanceId"], before["name"], before["ipAddress"])
    out = orch.sh(name, 0, ". /etc/orch-image-release; echo version=$ORCH_IMAGE_VERSION; "
                           "cloud-init status; test -e /var/tmp/orch-runcmd && echo seeded")
    assert out["stdout"].splitlines() == ["version=2", "status: done", "seeded"], out

    orch.run("vmss", "delete", "--name", name)
    assert libvirt_objects(f"{name}-") == {"domains": [], "volumes": [], "hosts": []}
