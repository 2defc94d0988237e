"""What only the fake hypervisor does: clock-driven boot/shutdown, start-time checks, faults.

The behaviour it shares with libvirt is held by tests/libvirt/test_contract.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.clock import FakeClock
from orchestrator.errors import Gone, HypervisorError, HypervisorUnavailable, InvalidInput
from orchestrator.hypervisor.base import HostInfo, PoolInfo, PowerState, Reservation
from orchestrator.hypervisor.domainxml import (
    BackingStore,
    DirectKernelBoot,
    Disk,
    Domain,
    Interface,
)
from orchestrator.hypervisor.fake import DEFAULT_HOST, OVERLAY_ALLOCATION, FakeHypervisor

BASE = "/images/tiny-1.qcow2"
KERNEL = "/images/tiny-1.vmlinuz"
MiB = 1024**2
GiB = 1024**3


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def hv(clock: FakeClock) -> FakeHypervisor:
    fake = FakeHypervisor(clock=clock)
    fake.add_external_file(BASE)
    fake.add_external_file(KERNEL)
    return fake


def domain(hv: FakeHypervisor, name: str = "web-1", *, network: str = "orchlab") -> Domain:
    disk = hv.create_overlay(
        "default", name=f"{name}-os.qcow2", backing_path=BASE, backing_format="qcow2",
        capacity_bytes=64 * MiB,
    )
    return Domain(
        name=name, domain_type="qemu", memory_mib=128, vcpus=1,
        disks=(Disk(path=disk.path, target="vda", backing=BackingStore(BASE)),),
        interfaces=(Interface(network=network, mac="52:54:00:00:00:01"),),
        boot=DirectKernelBoot(kernel=KERNEL),
    )


def running(hv: FakeHypervisor, name: str = "web-1") -> None:
    hv.define_domain(domain(hv, name))
    hv.start(name)


# --- timing ---------------------------------------------------------------------------------
def test_guest_is_ready_after_boot_seconds(hv: FakeHypervisor, clock: FakeClock) -> None:
    running(hv)
    assert hv.domain_state("web-1") is PowerState.RUNNING
    clock.advance(6.4)
    assert not hv.guest_ready("web-1")
    clock.advance(0.1)
    assert hv.guest_ready("web-1")


def test_boot_seconds_is_configurable(clock: FakeClock) -> None:
    hv = FakeHypervisor(clock=clock, boot_seconds=30.0)
    hv.add_external_file(BASE)
    hv.add_external_file(KERNEL)
    running(hv)
    clock.advance(29.9)
    assert not hv.guest_ready("web-1")
    clock.advance(0.1)
    assert hv.guest_ready("web-1")


@pytest.mark.parametrize("start", [1796148957.123, 1796148957.5, 1.7e9 + 0.1])
@pytest.mark.parametrize("boot", [3.76, 4.26, 6.5, 0.3])
def test_guest_is_ready_exactly_boot_seconds_after_start_at_any_wall_time(
        start: float, boot: float) -> None:
    """`vmss plan` starts its clock at the wall time and moves it by exactly the boot time:
    the guest must be ready then, whatever the rounding of start + boot (it was not, about
    every other run, and the plan predicted every instance unhealthy: Faulted)."""
    clock = FakeClock(start=start)
    hv = FakeHypervisor(clock=clock, boot_seconds=boot)
    hv.add_external_file(BASE)
    hv.add_external_file(KERNEL)
    running(hv)
    clock.advance(boot)
    assert hv.guest_ready("web-1")


def test_acpi_shutdown_takes_shutdown_seconds(hv: FakeHypervisor, clock: FakeClock) -> None:
    running(hv)
    clock.advance(10)
    hv.shutdown("web-1")
    assert hv.domain_state("web-1") is PowerState.SHUTTING_DOWN
    assert not hv.guest_ready("web-1")
    clock.advance(1.4)
    hv.shutdown("web-1")  # asking again does not restart the countdown
    assert hv.domain_state("web-1") is PowerState.SHUTTING_DOWN
    clock.advance(0.1)
    assert hv.domain_state("web-1") is PowerState.STOPPED


def test_guest_ignoring_acpi_runs_until_destroyed(hv: FakeHypervisor, clock: FakeClock) -> None:
    running(hv)
    hv.set_ignores_acpi("web-1", True)
    hv.shutdown("web-1")
    clock.advance(3600)
    assert hv.domain_state("web-1") is PowerState.RUNNING
    hv.destroy("web-1")
    assert hv.domain_state("web-1") is PowerState.STOPPED


def test_boot_id_changes_at_every_boot(hv: FakeHypervisor, clock: FakeClock) -> None:
    hv.define_domain(domain(hv))
    assert hv.boot_id("web-1") is None
    hv.start("web-1")
    first = hv.boot_id("web-1")
    assert first is not None
    hv.start("web-1")  # already running: same boot
    assert hv.boot_id("web-1") == first
    hv.destroy("web-1")
    assert hv.boot_id("web-1") is None
    hv.start("web-1")
    assert hv.boot_id("web-1") not in (None, first)
    assert hv.boot_id("missing") is None


def test_restart_resets_readiness(hv: FakeHypervisor, clock: FakeClock) -> None:
    running(hv)
    clock.advance(10)
    assert hv.guest_ready("web-1")
    hv.destroy("web-1")
    hv.start("web-1")
    assert not hv.guest_ready("web-1")
    clock.advance(6.5)
    assert hv.guest_ready("web-1")


# --- start-time checks ----------------------------------------------------------------------
def test_start_fails_when_a_disk_is_missing(hv: FakeHypervisor) -> None:
    dom = domain(hv)
    hv.define_domain(dom)  # define checks nothing, as libvirt
    hv.delete_volume("default", "web-1-os.qcow2")
    with pytest.raises(HypervisorError, match="web-1-os.qcow2"):
        hv.start("web-1")
    assert hv.domain_state("web-1") is PowerState.STOPPED


def test_start_fails_when_the_backing_image_or_kernel_is_missing(clock: FakeClock) -> None:
    hv = FakeHypervisor(clock=clock)
    hv.add_external_file(KERNEL)
    hv.define_domain(domain(hv))
    with pytest.raises(HypervisorError, match="tiny-1.qcow2"):
        hv.start("web-1")
    hv.add_external_file(BASE)
    hv.define_domain(
        dataclasses.replace(hv.domains["web-1"], boot=DirectKernelBoot(kernel="/nope/vmlinuz"))
    )
    with pytest.raises(HypervisorError, match="/nope/vmlinuz"):
        hv.start("web-1")


def test_start_fails_on_a_missing_network(hv: FakeHypervisor) -> None:
    hv.define_domain(domain(hv, network="elsewhere"))
    with pytest.raises(HypervisorError, match="elsewhere"):
        hv.start("web-1")


# --- storage accounting ---------------------------------------------------------------------
def test_volumes_take_space_and_a_full_pool_refuses(hv: FakeHypervisor) -> None:
    hv.set_pool_capacity("default", 10 * MiB)
    hv.create_overlay("default", name="a-os.qcow2", backing_path=BASE, backing_format="qcow2",
                      capacity_bytes=1024 * MiB)
    assert hv.pool_info("default").available_bytes == 10 * MiB - OVERLAY_ALLOCATION
    hv.create_volume("default", name="a-data0.qcow2", capacity_bytes=8 * MiB)
    with pytest.raises(HypervisorError, match="no space left"):
        hv.create_volume("default", name="a-data1.qcow2", capacity_bytes=2 * MiB)
    with pytest.raises(HypervisorError, match="no space left"):
        hv.upload_volume("default", name="a-seed.iso", data=b"x" * (2 * MiB), fmt="iso")
    hv.delete_volume("default", "a-data0.qcow2")
    hv.create_volume("default", name="a-data1.qcow2", capacity_bytes=2 * MiB)


def test_a_replaced_or_deleted_volume_gives_its_space_back(hv: FakeHypervisor) -> None:
    hv.set_pool_capacity("default", 10 * MiB)
    hv.upload_volume("default", name="a-seed.iso", data=b"x" * (4 * MiB), fmt="iso")
    hv.upload_volume("default", name="a-seed.iso", data=b"x" * MiB, fmt="iso")  # replaced
    assert hv.pool_info("default").available_bytes == 9 * MiB
    hv.delete_volume("default", "a-seed.iso")
    hv.delete_volume("default", "a-seed.iso")  # missing already: nothing given back twice
    assert hv.pool_info("default").available_bytes == 10 * MiB


def test_overlay_and_upload_keep_what_tests_inspect(hv: FakeHypervisor) -> None:
    hv.create_overlay("default", name="a-os.qcow2", backing_path=BASE, backing_format="qcow2",
                      capacity_bytes=MiB)
    assert hv.volume_backing("default", "a-os.qcow2") == (BASE, "qcow2")
    hv.upload_volume("default", name="a-seed.iso", data=b"seed", fmt="iso")
    assert hv.volume_data("default", "a-seed.iso") == b"seed"
    with pytest.raises(InvalidInput):
        hv.create_overlay("default", name="b-os.qcow2", backing_path=BASE, backing_format="",
                          capacity_bytes=MiB)


# --- the serial console's log, as virtlogd keeps it ------------------------------------------
def test_a_start_begins_the_console_log_in_the_pool_and_the_guest_appends(
        hv: FakeHypervisor) -> None:
    dom = dataclasses.replace(domain(hv), console_log="/var/lib/libvirt/images/web-1-console.log",
                              boot=DirectKernelBoot(kernel=KERNEL, cmdline="console=ttyS0 quiet"))
    hv.define_domain(dom)
    with pytest.raises(Gone):  # defined, never started: no log yet
        hv.read_volume_tail("default", "web-1-console.log", max_bytes=MiB)
    hv.start("web-1")
    log = hv.read_volume_tail("default", "web-1-console.log", max_bytes=MiB).decode()
    assert log.startswith("[    0.000000] Linux version ")
    assert "Command line: console=ttyS0 quiet\n" in log and len(log.splitlines()) == 3
    hv.append_console("web-1", "orch-tiny: boot finished\n")
    assert hv.read_volume_tail("default", "web-1-console.log", max_bytes=25) == \
        b"orch-tiny: boot finished\n"
    vol = {v.name: v for v in hv.list_volumes("default")}["web-1-console.log"]
    assert vol.capacity_bytes == len(log) + 25  # a raw file of what was written
    hv.destroy("web-1")
    hv.start("web-1")  # append='off': each boot begins the log anew
    again = hv.read_volume_tail("default", "web-1-console.log", max_bytes=MiB).decode()
    assert again == log and "boot finished" not in again


def test_a_console_log_outside_every_pool_is_not_a_volume(hv: FakeHypervisor) -> None:
    hv.define_domain(dataclasses.replace(domain(hv), console_log="/var/log/web-1.log"))
    hv.start("web-1")
    hv.append_console("web-1", "x\n")
    assert [v.name for v in hv.list_volumes("default")] == ["web-1-os.qcow2"]


def test_read_volume_tail_of_a_copied_file_reads_only_its_end(hv: FakeHypervisor,
                                                              tmp_path: Path) -> None:
    path, sha = image(tmp_path, content=b"0123456789" * 100, hole=0)
    hv.upload_file("default", name="tiny-1.raw", path=path, fmt="raw", sha256=sha)
    assert hv.read_volume_tail("default", "tiny-1.raw", max_bytes=4) == b"6789"
    hv.create_volume("default", name="a-data0.qcow2", capacity_bytes=MiB)
    assert hv.read_volume_tail("default", "a-data0.qcow2", max_bytes=4) == b""


# --- upload_file: a base image copied from a local file -------------------------------------
def image(tmp_path: Path, content: bytes = b"disk" * 4096, hole: int = MiB) -> tuple[str, str]:
    """A local image file with a hole between two copies of ``content``: (path, sha256)."""
    path = tmp_path / "tiny-1.qcow2"
    with open(path, "wb") as f:
        f.write(content)
        f.seek(len(content) + hole)
        f.write(content)
    return str(path), hashlib.sha256(path.read_bytes()).hexdigest()


def test_upload_file_copies_the_file_and_records_its_path(hv: FakeHypervisor,
                                                          tmp_path: Path) -> None:
    path, sha = image(tmp_path)
    size = Path(path).stat().st_size
    info = hv.upload_file("default", name="tiny-1.qcow2", path=path, fmt="qcow2", sha256=sha)
    assert (info.name, info.format, info.capacity_bytes) == ("tiny-1.qcow2", "qcow2", size)
    assert hv.volume_source("default", "tiny-1.qcow2") == path
    assert hv.uploads == [("tiny-1.qcow2", path)]
    assert hv.pool_info("default").available_bytes == 100 * 1024**3 - size  # its full size


def test_upload_file_reuses_a_volume_with_that_content_without_reading(
        hv: FakeHypervisor, tmp_path: Path) -> None:
    path, sha = image(tmp_path)
    first = hv.upload_file("default", name="tiny-1.qcow2", path=path, fmt="qcow2", sha256=sha)
    again = hv.upload_file("default", name="tiny-1.qcow2", path=path, fmt="qcow2", sha256=sha)
    assert again == first
    assert hv.uploads == [("tiny-1.qcow2", path)]  # the second call read nothing, sent nothing
    # a volume uploaded as bytes with the same content counts too
    data = Path(path).read_bytes()
    hv.upload_volume("default", name="copy.qcow2", data=data, fmt="qcow2")
    hv.upload_file("default", name="copy.qcow2", path=path, fmt="qcow2", sha256=sha)
    assert len(hv.uploads) == 1


def test_upload_file_replaces_a_volume_with_other_content(hv: FakeHypervisor,
                                                          tmp_path: Path) -> None:
    hv.create_volume("default", name="tiny-1.qcow2", capacity_bytes=MiB)  # empty: no content
    path, sha = image(tmp_path)
    info = hv.upload_file("default", name="tiny-1.qcow2", path=path, fmt="qcow2", sha256=sha)
    assert info.capacity_bytes == Path(path).stat().st_size
    assert hv.volume_source("default", "tiny-1.qcow2") == path
    assert [v.name for v in hv.list_volumes("default")] == ["tiny-1.qcow2"]


def test_upload_file_with_another_sha256_names_both_and_leaves_no_volume(
        hv: FakeHypervisor, tmp_path: Path) -> None:
    path, sha = image(tmp_path)
    wrong = hashlib.sha256(b"another image").hexdigest()
    with pytest.raises(HypervisorError) as info:
        hv.upload_file("default", name="tiny-1.qcow2", path=path, fmt="qcow2", sha256=wrong)
    assert not isinstance(info.value, InvalidInput)
    assert f"sha256 {sha} on arrival, expected {wrong}" in info.value.message
    assert hv.list_volumes("default") == []


def test_upload_file_honours_pool_space_and_faults(hv: FakeHypervisor, tmp_path: Path) -> None:
    path, sha = image(tmp_path)
    hv.set_pool_capacity("default", 1024)
    with pytest.raises(HypervisorError, match="no space left"):
        hv.upload_file("default", name="tiny-1.qcow2", path=path, fmt="qcow2", sha256=sha)
    hv.set_pool_capacity("default", 100 * MiB)
    hv.fail_next("upload_file", HypervisorError("boom"))
    with pytest.raises(HypervisorError, match="boom"):
        hv.upload_file("default", name="tiny-1.qcow2", path=path, fmt="qcow2", sha256=sha)
    hv.upload_file("default", name="tiny-1.qcow2", path=path, fmt="qcow2", sha256=sha)


_PEAK_RSS = """
import hashlib, os, resource, sys
from orchestrator.clock import FakeClock
from orchestrator.hypervisor.base import PoolInfo
from orchestrator.hypervisor.fake import FakeHypervisor
path, sha = sys.argv[1], sys.argv[2]
hv = FakeHypervisor(clock=FakeClock(), pools=[PoolInfo("p", "/p", 1 << 40, 0, True)])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
hv.upload_file("p", name="big.raw", path=path, fmt="raw", sha256=sha)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after)
"""


def test_upload_file_does_not_hold_the_file_in_memory(tmp_path: Path) -> None:
    """A fresh process uploads a 64 MiB sparse-ish file: its peak RSS grows by far less than
    the file (measured by hand with a 400 MiB one: 23 -> 25 MiB; reading it whole: 423)."""
    path = tmp_path / "big.raw"
    digest = hashlib.sha256()
    block = 4 * MiB
    with open(path, "wb") as f:
        for i in range(16):  # every other 4 MiB block is data, the rest holes
            if i % 2 == 0:
                data = hashlib.sha256(str(i).encode()).digest() * (block // 32)
                f.seek(i * block)
                f.write(data)
                digest.update(data)
            else:
                digest.update(bytes(block))
        f.truncate(16 * block)
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(path), digest.hexdigest()],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(root)})
    before_kib, after_kib = map(int, out.stdout.split())
    assert after_kib - before_kib < 16 * 1024, (before_kib, after_kib)  # KiB: < 16 of 64 MiB


# --- host_info ------------------------------------------------------------------------------
def test_host_info_is_configurable_and_domains_that_are_up_use_its_memory(
        clock: FakeClock) -> None:
    host = HostInfo(hostname="h1", memory_bytes_total=1024 * MiB, memory_bytes_free=512 * MiB,
                    memory_bytes_available=768 * MiB, cpus=4, domain_types=("kvm", "qemu"))
    hv = FakeHypervisor(clock=clock, host=host)
    hv.add_external_file(BASE)
    hv.add_external_file(KERNEL)
    assert hv.host_info() == host

    def memory() -> tuple[int, int]:
        info = hv.host_info()
        return info.memory_bytes_free // MiB, info.memory_bytes_available // MiB

    running(hv, "web-1")  # 128 MiB
    running(hv, "web-2")
    assert memory() == (256, 512)
    hv.shutdown("web-2")  # going down: still up
    assert memory() == (256, 512)
    clock.advance(hv.shutdown_seconds)
    assert memory() == (384, 640)
    hv.set_host(dataclasses.replace(host, memory_bytes_free=100 * MiB))
    assert memory() == (0, 640)  # never below nothing
    assert hv.host_info().domain_types == ("kvm", "qemu") and hv.host_info().cpus == 4


def test_available_memory_and_domain_types_can_be_set(hv: FakeHypervisor) -> None:
    hv.set_memory_available(512 * MiB)
    info = hv.host_info()
    assert (info.memory_bytes_available, info.memory_bytes_free) == (512 * MiB, 512 * MiB)
    assert info.memory_bytes_total == DEFAULT_HOST.memory_bytes_total
    hv.set_memory_available(100 * GiB)  # more than the host has: its total
    assert hv.host_info().memory_bytes_available == DEFAULT_HOST.memory_bytes_total
    hv.set_domain_types(["qemu", "kvm", "qemu"])
    assert hv.host_info().domain_types == ("kvm", "qemu")
    hv.set_domain_types([])
    assert hv.host_info().domain_types == ()


def test_the_default_host_is_the_test_machine_with_emulation(hv: FakeHypervisor) -> None:
    assert hv.host_info() == DEFAULT_HOST
    assert DEFAULT_HOST.domain_types == ("qemu",) and DEFAULT_HOST.cpus == 2
    hv.set_unavailable(True)
    with pytest.raises(HypervisorUnavailable):
        hv.host_info()


# --- fault injection ------------------------------------------------------------------------
def test_reservations_are_checked_in_the_order_they_were_added(hv: FakeHypervisor) -> None:
    first = Reservation("52:54:00:00:00:01", "10.213.0.11", "web-1")
    second = Reservation("52:54:00:00:00:02", "10.213.0.12", "web-2")
    hv.add_reservation("orchlab", first)
    hv.add_reservation("orchlab", second)
    # conflicts with both (the IP of the first, the MAC of the second): the first is named,
    # as libvirt's own list would be read
    with pytest.raises(HypervisorError, match="existing 52:54:00:00:00:01 10.213.0.11 web-1"):
        hv.add_reservation("orchlab", Reservation("52:54:00:00:00:02", "10.213.0.11", "web-9"))
    hv.remove_reservation("orchlab", Reservation(first.mac.upper(), first.ip, ""))
    hv.add_reservation("orchlab", Reservation("52:54:00:00:00:09", first.ip, first.name))
    assert hv.list_reservations("orchlab") == [
        second, Reservation("52:54:00:00:00:09", first.ip, first.name)]


def test_fail_next_raises_exactly_count_times(hv: FakeHypervisor) -> None:
    hv.define_domain(domain(hv))
    hv.fail_next("start", HypervisorError("boom"), count=2)
    for _ in range(2):
        with pytest.raises(HypervisorError, match="boom"):
            hv.start("web-1")
    assert hv.domain_state("web-1") is PowerState.STOPPED  # a failed call changed nothing
    hv.start("web-1")
    assert hv.domain_state("web-1") is PowerState.RUNNING


def test_fail_next_refuses_unknown_methods(hv: FakeHypervisor) -> None:
    with pytest.raises(InvalidInput):
        hv.fail_next("strat", HypervisorError("typo"))


def test_crash_stops_at_once_and_start_recovers(hv: FakeHypervisor) -> None:
    running(hv)
    hv.crash("web-1")
    assert hv.domain_state("web-1") is PowerState.CRASHED
    assert not hv.guest_ready("web-1")
    hv.destroy("web-1")  # not running: no error, still shows the crash
    assert hv.domain_state("web-1") is PowerState.CRASHED
    hv.start("web-1")
    assert hv.domain_state("web-1") is PowerState.RUNNING
    with pytest.raises(Gone):
        hv.crash("missing")


def test_unavailable_hypervisor_fails_every_call_until_back(hv: FakeHypervisor) -> None:
    running(hv)
    hv.set_unavailable(True)
    with pytest.raises(HypervisorUnavailable):
        hv.domain_state("web-1")
    with pytest.raises(HypervisorUnavailable):
        hv.add_reservation("orchlab", Reservation("52:54:00:00:00:01", "10.213.0.11", "web-1"))
    hv.close()  # cleanup still works
    hv.set_unavailable(False)
    assert hv.domain_state("web-1") is PowerState.RUNNING


def test_calls_are_recorded_in_order_failed_ones_included(hv: FakeHypervisor) -> None:
    hv.define_domain(domain(hv))
    hv.fail_next("start", HypervisorError("boom"))
    with pytest.raises(HypervisorError):
        hv.start("web-1")
    hv.start("web-1")
    assert hv.calls == [
        ("create_overlay", "web-1-os.qcow2"),
        ("define_domain", "web-1"),
        ("start", "web-1"),
        ("start", "web-1"),
    ]


def test_domains_exposes_the_persistent_definition(hv: FakeHypervisor) -> None:
    dom = domain(hv)
    hv.define_domain(dom)
    assert hv.domains == {"web-1": dom}


def test_custom_pools_and_networks(clock: FakeClock) -> None:
    hv = FakeHypervisor(clock=clock, networks=[], pools=[PoolInfo("p", "/p", MiB, MiB, True)])
    with pytest.raises(Gone):
        hv.network_info("default")
    assert hv.pool_info("p").capacity_bytes == MiB
