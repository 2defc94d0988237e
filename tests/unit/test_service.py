"""Scale-set lifecycle on the fake hypervisor with a fake clock: create, scale, delete,
power actions, failures half-way, and ownership (nothing foreign is touched)."""

from __future__ import annotations

import pytest

from orchestrator.errors import Conflict, HypervisorError, InvalidInput, NotFound, OperationFailed
from orchestrator.hypervisor.base import PowerState
from orchestrator.hypervisor.domainxml import Disk, Domain, Interface
from orchestrator.model import ScaleSetSpec, validate
from tests.world import Reconciler, Upgrades, World


def spec(name: str = "web", capacity: int = 3, **model: object) -> ScaleSetSpec:
    return validate(ScaleSetSpec, {"name": name, "capacity": capacity,
                                   "model": {"image": "tiny:1", **model}})


class TestCreate:
    def test_three_instances_become_healthy_concurrently(self, world: World) -> None:
        t0 = world.clock.monotonic()
        view = world.service.create(spec(capacity=3))
        elapsed = world.clock.monotonic() - t0
        assert view["capacity"] == 3 and view["generation"] == 1
        # concurrent boots: about one boot time, not three
        assert world.hv.boot_seconds <= elapsed < 2 * world.hv.boot_seconds
        instances = world.service.list_instances("web")
        assert [i["instanceId"] for i in instances] == [0, 1, 2]
        assert {i["healthState"] for i in instances} == {"Healthy"}
        assert {i["powerState"] for i in instances} == {"running"}
        assert all(i["latestModelApplied"] and i["modelGeneration"] == 1 for i in instances)
        assert len({i["ipAddress"] for i in instances}) == 3

    def test_every_resource_carries_ownership(self, world: World) -> None:
        world.service.create(spec(capacity=2, dataDisks=[{"lun": 0, "sizeGiB": 1}]))
        domains, volumes, reservations = world.resources()
        assert domains == {"web-0", "web-1"}
        for name in domains:
            owner = world.hv.domain_owner(name)
            assert owner is not None and owner.set_name == "web" and owner.generation == 1
        assert volumes == {f"web-{i}-{kind}" for i in (0, 1)
                           for kind in ("os0.qcow2", "seed.iso", "data0.qcow2", "console.log")}
        assert reservations == {"web-0", "web-1"}

    def test_os_disk_is_an_overlay_with_pinned_backing_format(self, world: World) -> None:
        world.service.create(spec(capacity=1))
        image = world.registry.get("tiny:1")
        # on the image's copy in the host's pool, never on the controller's own file
        backing = world.hv.volume_backing("default", "web-0-os0.qcow2")
        assert backing is not None and backing[1] == "qcow2"
        assert backing[0].startswith(world.hv.pool_info("default").path)
        assert world.hv.source_of(backing[0]) == str(image.disk)
        os_disk = world.hv.domains["web-0"].disks[0]
        assert os_disk.backing is not None and os_disk.backing.fmt == "qcow2"

    def test_seed_carries_pinned_host_key_and_admin_key(self, world: World) -> None:
        world.service.create(spec(capacity=1))
        inst = world.store.find_instance("web", 0)
        assert inst is not None
        seed = world.hv.volume_data("default", "web-0-seed.iso")
        assert seed is not None
        assert inst.host_key_public.split()[1].encode() in seed
        admin_pub = (world.state_dir / "sets/web/id_ed25519.pub").read_text().split()[1]
        assert admin_pub.encode() in seed
        assert (world.state_dir / "sets/web/id_ed25519").stat().st_mode & 0o077 == 0

    def test_unhealthy_instances_fail_the_create_by_name(self, world: World) -> None:
        world.prober.unhealthy.add("web-1")
        with pytest.raises(OperationFailed, match=r"web-1 Unhealthy"):
            world.service.create(spec(capacity=2))
        # the set is kept (like Azure): it can be repaired or deleted
        assert world.store.find_set("web") is not None

    def test_failure_half_way_removes_what_was_made(self, world: World) -> None:
        world.hv.fail_next("define_domain", HypervisorError("boom"), count=1)
        # the first instance's define fails: nothing may be left
        with pytest.raises(HypervisorError):
            world.service.create(spec(capacity=3))
        assert world.resources() == (set(), set(), set())
        assert world.store.find_set("web") is None
        assert world.store.all_instances() == []

    def test_failure_on_a_later_instance_also_cleans_the_earlier_ones(self, world: World) -> None:
        calls = {"n": 0}
        original = world.hv.start

        def start(name: str) -> None:
            calls["n"] += 1
            if calls["n"] == 3:
                raise HypervisorError("cannot start")
            original(name)

        world.hv.start = start  # type: ignore[method-assign]
        with pytest.raises(HypervisorError):
            world.service.create(spec(capacity=3))
        assert world.resources() == (set(), set(), set())
        assert world.store.find_set("web") is None

    def test_pool_full_fails_cleanly(self, world: World) -> None:
        world.hv.set_pool_capacity("default", 2 * 2**20)
        with pytest.raises(HypervisorError, match="no space"):
            world.service.create(spec(capacity=2, dataDisks=[{"lun": 0, "sizeGiB": 1}]))
        assert world.resources() == (set(), set(), set())

    @pytest.mark.parametrize("bad", ["../x", "a</name>", "Web", "x" * 41, "-a", "a b", ""])
    def test_invalid_names_are_rejected(self, world: World, bad: str) -> None:
        with pytest.raises(InvalidInput):
            world.service.create(spec(name=bad))
        assert world.resources() == (set(), set(), set())

    def test_unknown_image_changes_nothing(self, world: World) -> None:
        with pytest.raises(NotFound):
            world.service.create(validate(ScaleSetSpec, {"name": "web", "capacity": 1,
                                                         "model": {"image": "nope:1"}}))
        assert world.store.list_sets() == []

    def test_changed_image_file_is_refused(self, world: World) -> None:
        image = world.registry.get("tiny:1")
        image.disk.write_bytes(b"tampered")
        with pytest.raises(InvalidInput, match="changed since it was registered"):
            world.service.create(spec(capacity=1))
        assert world.resources() == (set(), set(), set())

    def test_removed_image_file_is_refused(self, world: World) -> None:
        world.registry.get("tiny:1").disk.unlink()
        with pytest.raises(InvalidInput, match="missing or not a regular file"):
            world.service.create(spec(capacity=1))
        assert world.resources() == (set(), set(), set())

    @pytest.mark.parametrize("harm", ["changed", "removed"])
    def test_update_to_a_harmed_image_touches_no_instance(self, world: World, harm: str) -> None:
        from tests.world import Upgrades

        world.service.create(validate(ScaleSetSpec, {
            "name": "web", "capacity": 2, "model": {"image": "tiny:1"},
            "upgradePolicy": {"mode": "Automatic"}}))
        world.register_image("tiny", "2")
        disk = world.registry.get("tiny:2").disk
        if harm == "changed":
            disk.write_bytes(b"tampered")
        else:
            disk.unlink()
        calls = len(world.hv.calls)
        with pytest.raises(InvalidInput, match="tiny:2"):
            Upgrades(world.service).update("web", {"model": {"image": "tiny:2"}})
        assert world.hv.calls[calls:] == []
        assert world.store.get_set("web").generation == 1

    def test_unknown_network_changes_nothing(self, world: World) -> None:
        with pytest.raises(InvalidInput, match="network nowhere"):
            world.service.create(spec(capacity=1, network="nowhere"))
        assert world.store.list_sets() == []

    def test_duplicate_set_is_refused(self, world: World) -> None:
        world.service.create(spec(capacity=1))
        with pytest.raises(InvalidInput, match="already exists"):
            world.service.create(spec(capacity=1))

    def test_foreign_domain_with_our_name_is_left_alone(self, world: World) -> None:
        foreign = Domain(name="web-0", domain_type="qemu", memory_mib=64, vcpus=1,
                         disks=(Disk(path="/somewhere/else.qcow2", target="vda"),),
                         interfaces=(Interface("default", "52:54:00:aa:bb:cc"),))
        world.hv.define_domain(foreign)
        with pytest.raises(HypervisorError, match="not owned"):
            world.service.create(spec(capacity=1))
        assert world.hv.domains["web-0"] == foreign
        assert world.hv.domain_owner("web-0") is None


class TestScale:
    def test_scale_out_and_in_never_reuses_ids(self, world: World) -> None:
        world.service.create(spec(capacity=2))
        world.service.scale("web", 3)
        assert [i.instance_id for i in world.store.list_instances("web")] == [0, 1, 2]
        world.service.scale("web", 1)
        assert [i.instance_id for i in world.store.list_instances("web")] == [0]
        domains, volumes, reservations = world.resources()
        assert domains == {"web-0"} and reservations == {"web-0"}
        assert volumes == {"web-0-os0.qcow2", "web-0-seed.iso", "web-0-console.log"}
        world.service.scale("web", 2)
        assert [i.instance_id for i in world.store.list_instances("web")] == [0, 3]
        assert world.service.set_view(world.store.get_set("web"))["capacity"] == 2

    def test_scale_in_skips_protected_instances(self, world: World) -> None:
        world.service.create(spec(capacity=3))
        inst = world.store.find_instance("web", 2)
        assert inst is not None
        world.store.update_instance(inst, protect_from_scale_in=True)
        world.service.scale("web", 2)
        assert [i.instance_id for i in world.store.list_instances("web")] == [0, 2]

    def test_oldest_vm_policy_removes_lowest_ids(self, world: World) -> None:
        s = validate(ScaleSetSpec, {"name": "web", "capacity": 3, "scaleInPolicy": "OldestVM",
                                    "model": {"image": "tiny:1"}})
        world.service.create(s)
        world.service.scale("web", 1)
        assert [i.instance_id for i in world.store.list_instances("web")] == [2]

    def test_addresses_are_released_and_reused(self, world: World) -> None:
        world.service.create(spec(capacity=2))
        pairs = {(i.ip, i.mac) for i in world.store.list_instances("web")}
        world.service.scale("web", 0)
        world.service.scale("web", 2)
        # a reused address comes back with its MAC: dnsmasq's old lease still matches it
        assert {(i.ip, i.mac) for i in world.store.list_instances("web")} == pairs

    def test_address_leased_to_another_mac_is_skipped(self, world: World) -> None:
        # a deleted guest's lease outlives it; dnsmasq refuses that address to a new MAC
        world.hv.add_lease("default", "192.168.122.2", "52:54:00:12:34:56")
        world.service.create(spec(capacity=1))
        inst = world.store.find_instance("web", 0)
        assert inst is not None and inst.ip == "192.168.122.3"
        assert inst.mac == "52:54:00:a8:7a:03"

    def test_bad_capacity_changes_nothing(self, world: World) -> None:
        world.service.create(spec(capacity=1))
        with pytest.raises(InvalidInput, match="capacity"):
            world.service.scale("web", -1)
        with pytest.raises(InvalidInput, match="capacity"):
            world.service.scale("web", 10_000)
        assert len(world.store.list_instances("web")) == 1


class TestDelete:
    def test_delete_leaves_nothing(self, world: World) -> None:
        world.service.create(spec(capacity=3, dataDisks=[{"lun": 0, "sizeGiB": 1}]))
        world.service.delete("web")
        assert world.resources() == (set(), set(), set())
        assert world.store.find_set("web") is None
        assert not (world.state_dir / "sets" / "web").exists()

    def test_the_console_logs_in_the_pool_go_with_their_instance(self, world: World) -> None:
        """virtlogd writes each serial console into the host's pool, with rotated copies."""
        world.service.create(spec(capacity=2))
        pool = world.hv.pool_info("default").path
        assert world.hv.domains["web-0"].console_log == f"{pool}/web-0-console.log"
        assert {v.name for v in world.hv.list_volumes("default")
                if "console" in v.name} == {"web-0-console.log", "web-1-console.log"}  # booted
        world.hv.create_volume("default", name="web-0-console.log.0", capacity_bytes=4096)
        world.hv.create_volume("default", name="web-7-console.log", capacity_bytes=4096)
        world.service.delete_instances("web", [0])
        assert {v.name for v in world.hv.list_volumes("default")
                if "console" in v.name} == {"web-1-console.log", "web-7-console.log"}
        report = Reconciler(Upgrades(world.service)).run_pass()  # web-7: no row knows it
        assert any("1 volume(s)" in a for a in report.actions), report
        assert {v.name for v in world.hv.list_volumes("default")
                if "console" in v.name} == {"web-1-console.log"}
        world.service.delete("web")
        assert world.resources() == (set(), set(), set())

    def test_delete_instances_shrinks_capacity(self, world: World) -> None:
        world.service.create(spec(capacity=3))
        view = world.service.delete_instances("web", [1])
        assert view["capacity"] == 2
        assert [i.instance_id for i in world.store.list_instances("web")] == [0, 2]

    def test_delete_of_unknown_instance_is_not_found(self, world: World) -> None:
        world.service.create(spec(capacity=1))
        with pytest.raises(NotFound, match="no instance 7"):
            world.service.delete_instances("web", [7])


class TestPower:
    def test_stop_and_start(self, world: World) -> None:
        world.service.create(spec(capacity=2))
        world.service.power("web", [0], "stop")
        assert world.hv.domain_state("web-0") is PowerState.STOPPED
        view = {i["instanceId"]: i for i in world.service.list_instances("web")}
        assert view[0]["powerState"] == "stopped" and view[1]["powerState"] == "running"
        world.service.power("web", [0], "start")
        view = {i["instanceId"]: i for i in world.service.list_instances("web")}
        assert view[0]["powerState"] == "running" and view[0]["healthState"] == "Healthy"

    def test_deallocate_is_reported(self, world: World) -> None:
        world.service.create(spec(capacity=1))
        world.service.power("web", [0], "deallocate")
        assert world.service.list_instances("web")[0]["powerState"] == "deallocated"

    def test_guest_ignoring_acpi_is_powered_off_after_the_timeout(self, world: World) -> None:
        world.service.create(spec(capacity=1))
        world.hv.set_ignores_acpi("web-0")
        t0 = world.clock.monotonic()
        world.service.power("web", [0], "stop")
        waited = world.clock.monotonic() - t0
        assert world.hv.domain_state("web-0") is PowerState.STOPPED
        assert waited >= world.service.engine.settings.shutdown_timeout
        assert ("destroy", "web-0") in world.hv.calls

    def test_restart_boots_again(self, world: World) -> None:
        world.service.create(spec(capacity=1))
        before = world.hv.boot_id("web-0")
        world.service.power("web", [0], "restart")
        assert world.hv.boot_id("web-0") not in (None, before)
        assert world.service.list_instances("web")[0]["healthState"] == "Healthy"


class TestLockAndApply:
    def test_second_writer_gets_conflict(self, world: World) -> None:
        world.service.create(spec(capacity=1))
        with world.service.locked("web", "test"), pytest.raises(Conflict, match=r"locked by pid \d+ \(test\)"):
            world.service.scale("web", 2)



class TestJournal:
    def test_every_locked_operation_is_journaled_with_its_outcome(self, world: World) -> None:
        world.service.create(spec(capacity=1))
        world.service.scale("web", 2)
        world.prober.unhealthy.add("web-2")
        with pytest.raises(OperationFailed):
            world.service.scale("web", 3)
        ops = world.service.operations_view("web")
        assert [(o["kind"], o["status"]) for o in ops] == [
            ("create", "succeeded"), ("scale", "succeeded"), ("scale", "failed")]
        assert "web-2 Unhealthy" in ops[-1]["error"]
        assert all(o["endedAt"] for o in ops)


class TestRefresh:
    def test_a_probe_round_records_each_running_instance_and_no_other(self, world: World) -> None:
        world.service.create(spec(capacity=3))
        world.service.power("web", [2], "stop")
        stopped = world.store.find_instance("web", 2)
        assert stopped is not None
        world.prober.unhealthy.add("web-1")
        probes = validate(ScaleSetSpec, world.store.get_set("web").spec).model.health_probe
        for _ in range(probes.number_of_probes):  # as many failures as make it Unhealthy
            world.service.refresh_health("web")
        health = {i.instance_id: i.health for i in world.store.list_instances("web")}
        assert (health[0]["state"], health[1]["state"]) == ("Healthy", "Unhealthy")
        assert health[1]["last"]["exitStatus"] == 1
        assert health[2] == stopped.health  # not running: not probed, not written
