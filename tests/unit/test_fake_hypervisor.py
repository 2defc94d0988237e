"""What only the fake hypervisor does: clock-driven boot/shutdown, start-time checks, faults.

The behaviour it shares with libvirt is held by tests/libvirt/test_contract.py.
"""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.clock import FakeClock
from orchestrator.errors import Gone, HypervisorError, HypervisorUnavailable, InvalidInput
from orchestrator.hypervisor.base import PoolInfo, PowerState, Reservation
from orchestrator.hypervisor.domainxml import (
    BackingStore,
    DirectKernelBoot,
    Disk,
    Domain,
    Interface,
)
from orchestrator.hypervisor.fake import OVERLAY_ALLOCATION, FakeHypervisor

BASE = "/images/tiny-1.qcow2"
KERNEL = "/images/tiny-1.vmlinuz"
MiB = 1024**2


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


def test_overlay_and_upload_keep_what_tests_inspect(hv: FakeHypervisor) -> None:
    hv.create_overlay("default", name="a-os.qcow2", backing_path=BASE, backing_format="qcow2",
                      capacity_bytes=MiB)
    assert hv.volume_backing("default", "a-os.qcow2") == (BASE, "qcow2")
    hv.upload_volume("default", name="a-seed.iso", data=b"seed", fmt="iso")
    assert hv.volume_data("default", "a-seed.iso") == b"seed"
    with pytest.raises(InvalidInput):
        hv.create_overlay("default", name="b-os.qcow2", backing_path=BASE, backing_format="",
                          capacity_bytes=MiB)


# --- fault injection ------------------------------------------------------------------------
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
