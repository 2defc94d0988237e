"""Model updates and upgrade policies on the fake hypervisor with a fake clock: Manual,
Automatic, Rolling in place and with MaxSurge, thresholds, rollback, cancel, reimage."""

from __future__ import annotations

import re
from typing import Any

import pytest

from orchestrator.errors import InvalidInput, OperationFailed
from orchestrator.hypervisor.base import PowerState
from orchestrator.model import ScaleSetSpec, validate
from tests.world import Upgrades, World

from .fakecli import FakeCli, install


def make_set(world: World, *, mode: str = "Rolling", capacity: int = 3,
             rolling: dict[str, Any] | None = None, **model: Any) -> Upgrades:
    world.register_image("tiny", "2")
    spec = validate(ScaleSetSpec, {
        "name": "web", "capacity": capacity,
        "model": {"image": "tiny:1", "dataDisks": [{"lun": 0, "sizeGiB": 1}], **model},
        "upgradePolicy": {"mode": mode, "rollingUpgradePolicy": {
            "maxBatchInstancePercent": 34, "maxUnhealthyInstancePercent": 34, **(rolling or {})}},
    })
    world.service.create(spec)
    return Upgrades(world.service)


def gens(world: World) -> dict[int, tuple[int, str]]:
    return {i.instance_id: (i.model_generation, i.image) for i in world.store.list_instances("web")}


def os_volumes(world: World) -> list[str]:
    return sorted(v.name for v in world.hv.list_volumes("default") if "-os" in v.name)


def break_image(world: World, ref: str) -> None:
    world.prober.broken_images.add(str(world.registry.get(ref).disk))


class TestManual:
    def test_update_changes_nothing_until_update_instances(self, world: World) -> None:
        up = make_set(world, mode="Manual")
        defines = world.hv.calls.count(("define_domain", "web-0"))
        view = up.update("web", {"model": {"image": "tiny:2"}})
        assert view["generation"] == 2
        assert gens(world) == {0: (1, "tiny:1"), 1: (1, "tiny:1"), 2: (1, "tiny:1")}
        assert world.hv.calls.count(("define_domain", "web-0")) == defines
        listed = world.service.list_instances("web")
        assert [i["latestModelApplied"] for i in listed] == [False, False, False]
        up.update_instances("web", [1])
        assert gens(world) == {0: (1, "tiny:1"), 1: (2, "tiny:2"), 2: (1, "tiny:1")}
        # same identity, new OS disk on the new image, the old one gone once healthy
        inst = world.store.find_instance("web", 1)
        assert inst is not None and inst.os_volume == "web-1-os1.qcow2"
        backing = world.hv.volume_backing("default", "web-1-os1.qcow2")
        assert backing is not None and backing[1] == "qcow2"
        assert world.hv.source_of(backing[0]) == str(world.registry.get("tiny:2").disk)
        assert "web-1-os0.qcow2" not in os_volumes(world)
        assert "web-1-data0.qcow2" in {v.name for v in world.hv.list_volumes("default")}

    def test_update_instances_star_and_skip_current(self, world: World) -> None:
        up = make_set(world, mode="Manual")
        up.update("web", {"model": {"image": "tiny:2"}})
        up.update_instances("web", [0])
        starts = world.hv.calls.count(("start", "web-0"))
        up.update_instances("web", None)
        assert {g for g, _ in gens(world).values()} == {2}
        assert world.hv.calls.count(("start", "web-0")) == starts  # already current: untouched

    def test_scale_out_gets_the_latest_model(self, world: World) -> None:
        up = make_set(world, mode="Manual")
        up.update("web", {"model": {"image": "tiny:2"}})
        world.service.scale("web", 4)
        assert gens(world)[3] == (2, "tiny:2")

    def test_os_profile_change_reaches_instances_only_on_reimage(self, world: World) -> None:
        up = make_set(world, mode="Automatic")
        seed_before = world.hv.volume_data("default", "web-0-seed.iso")
        up.update("web", {"model": {"customData": "#cloud-config\nruncmd:\n  - touch /marker\n"}})
        assert world.hv.volume_data("default", "web-0-seed.iso") == seed_before
        up.reimage("web", [0])
        seed_after = world.hv.volume_data("default", "web-0-seed.iso")
        assert seed_after is not None and b"/marker" in seed_after


class TestAutomatic:
    def test_all_instances_at_once(self, world: World) -> None:
        up = make_set(world, mode="Automatic")
        t0 = world.clock.monotonic()
        up.update("web", {"model": {"image": "tiny:2", "memoryMiB": 512}})
        elapsed = world.clock.monotonic() - t0
        assert {g for g, _ in gens(world).values()} == {2}
        assert all(world.hv.domains[f"web-{i}"].memory_mib == 512 for i in range(3))
        # concurrently: about one shutdown + boot, not three
        assert elapsed < 2 * (world.hv.boot_seconds + world.hv.shutdown_seconds) + 5

    def test_failure_is_reported(self, world: World) -> None:
        up = make_set(world, mode="Automatic")
        world.register_image("tiny", "3")
        break_image(world, "tiny:3")
        with pytest.raises(OperationFailed, match="automatic upgrade: 3 of 3 instances failed"):
            up.update("web", {"model": {"image": "tiny:3"}})


class TestRolling:
    def test_in_place_batches_of_one(self, world: World) -> None:
        up = make_set(world)
        up.update("web", {"model": {"image": "tiny:2"}})
        status = up.latest_status("web")
        assert status["runningStatus"]["code"] == "Completed"
        assert [b["instances"] for b in status["batches"]] == [[0], [1], [2]]
        assert status["progress"] == {"successfulInstanceCount": 3, "failedInstanceCount": 0,
                                      "inProgressInstanceCount": 0, "pendingInstanceCount": 0}
        assert "34% of 3 instances = 1 per batch" in status["thresholds"][0]
        assert {g for g, _ in gens(world).values()} == {2}
        assert os_volumes(world) == ["web-0-os1.qcow2", "web-1-os1.qcow2", "web-2-os1.qcow2"]

    def test_start_again_skips_instances_on_the_latest_model(self, world: World) -> None:
        up = make_set(world)
        up.update("web", {"model": {"image": "tiny:2"}})
        calls = len(world.hv.calls)
        status = up.start_rolling("web")
        assert status["runningStatus"]["code"] == "Completed" and status["batches"] == []
        assert not [c for c in world.hv.calls[calls:] if c[0] in ("define_domain", "start")]

    def test_pause_between_batches(self, world: World) -> None:
        up = make_set(world, rolling={"pauseTimeBetweenBatches": "PT30S"})
        t0 = world.clock.monotonic()
        up.update("web", {"model": {"image": "tiny:2"}})
        assert world.clock.monotonic() - t0 >= 60  # two pauses between three batches

    def test_broken_image_faults_after_first_batch_rest_untouched(self, world: World) -> None:
        up = make_set(world, healthProbe={"gracePeriodSeconds": 30})
        world.register_image("tiny", "3")
        break_image(world, "tiny:3")
        with pytest.raises(OperationFailed, match="Faulted"):
            up.update("web", {"model": {"image": "tiny:3"}})
        status = up.latest_status("web")
        assert status["runningStatus"]["code"] == "Faulted"
        assert "1 of 1 upgraded instances are unhealthy" in status["error"]["message"]
        assert len(status["batches"]) == 1
        assert gens(world) == {0: (2, "tiny:3"), 1: (1, "tiny:1"), 2: (1, "tiny:1")}
        # the failed instance keeps its previous OS disk for a rollback
        assert "web-0-os0.qcow2" in os_volumes(world)

    def test_rollback_on_policy_breach(self, world: World) -> None:
        up = make_set(world, rolling={"rollbackFailedInstancesOnPolicyBreach": True},
                      healthProbe={"gracePeriodSeconds": 30})
        world.register_image("tiny", "3")
        break_image(world, "tiny:3")
        with pytest.raises(OperationFailed, match="Faulted"):
            up.update("web", {"model": {"image": "tiny:3"}})
        status = up.latest_status("web")
        assert "rolled back" in status["rollback"]
        assert gens(world) == {0: (1, "tiny:1"), 1: (1, "tiny:1"), 2: (1, "tiny:1")}
        assert os_volumes(world) == ["web-0-os0.qcow2", "web-1-os0.qcow2", "web-2-os0.qcow2"]
        healths = {i["instanceId"]: i["healthState"] for i in world.service.list_instances("web")}
        assert healths == {0: "Healthy", 1: "Healthy", 2: "Healthy"}

    def test_unhealthy_before_a_batch_faults(self, world: World) -> None:
        up = make_set(world, rolling={"maxUnhealthyInstancePercent": 0})
        world.prober.unhealthy.add("web-2")
        with pytest.raises(OperationFailed, match="unhealthy before the next batch"):
            up.update("web", {"model": {"image": "tiny:2"}})
        assert gens(world) == {0: (1, "tiny:1"), 1: (1, "tiny:1"), 2: (1, "tiny:1")}

    def test_prioritize_unhealthy_instances(self, world: World) -> None:
        up = make_set(world, rolling={"prioritizeUnhealthyInstances": True,
                                      "maxUnhealthyInstancePercent": 50})
        world.prober.unhealthy.add("web-2")
        original = world.hv.define_domain

        def heal_on_upgrade(domain: Any) -> None:  # the new model cures web-2
            original(domain)
            world.prober.unhealthy.discard(domain.name)

        world.hv.define_domain = heal_on_upgrade  # type: ignore[method-assign]
        up.update("web", {"model": {"image": "tiny:2"}})
        assert [b["instances"] for b in up.latest_status("web")["batches"]] == [[2], [0], [1]]

    def test_protected_instances_are_passed_by(self, world: World) -> None:
        up = make_set(world)
        world.service.protect("web", 1, scale_in=None, set_actions=True)
        up.update("web", {"model": {"image": "tiny:2"}})
        assert gens(world)[1] == (1, "tiny:1")
        assert up.latest_status("web")["runningStatus"]["code"] == "Completed"

    def test_cancel_finishes_the_batch_in_flight_only(self, world: World) -> None:
        up = make_set(world)
        original = world.hv.start

        def start_and_cancel(name: str) -> None:
            original(name)
            latest = world.store.latest_rolling_upgrade("web")
            if latest is not None and latest.status == "RollingForward":
                world.store.request_cancel(latest.id)

        up.update("web", {"model": {"image": "tiny:2"}}, wait=False)
        world.hv.start = start_and_cancel  # type: ignore[method-assign]
        status = up.start_rolling("web")
        assert status["runningStatus"]["code"] == "Cancelled"
        assert status["lastAction"] == "Cancel"
        assert "in-flight batch 1 was completed" in status["cancel"]
        assert gens(world) == {0: (2, "tiny:2"), 1: (1, "tiny:1"), 2: (1, "tiny:1")}

    def test_surge_replaces_instances_with_new_ids(self, world: World) -> None:
        up = make_set(world, rolling={"maxSurge": True})
        most = 0
        original = world.hv.define_domain

        def counting(domain: Any) -> None:
            nonlocal most
            original(domain)
            most = max(most, len(world.hv.list_domains()))

        world.hv.define_domain = counting  # type: ignore[method-assign]
        up.update("web", {"model": {"image": "tiny:2"}})
        assert sorted(gens(world)) == [3, 4, 5]
        assert {g for g, _ in gens(world).values()} == {2}
        assert {d.name for d in world.hv.list_domains()} == {"web-3", "web-4", "web-5"}
        assert most <= 3 + 1  # capacity + batch size
        _, volumes, reservations = world.resources()
        assert reservations == {"web-3", "web-4", "web-5"}
        assert all(v.startswith(("web-3-", "web-4-", "web-5-")) for v in volumes)

    def test_surge_without_room_is_refused_before_anything(self, world: World) -> None:
        up = make_set(world, rolling={"maxSurge": True})
        world.hv.set_pool_capacity("default", 4 * 2**30)
        journal = world.store.list_operations("web")
        with pytest.raises(InvalidInput, match="maxSurge needs"):
            up.update("web", {"model": {"image": "tiny:2"}})
        assert world.store.list_operations("web") == journal  # not even a failed entry
        assert gens(world) == {0: (1, "tiny:1"), 1: (1, "tiny:1"), 2: (1, "tiny:1")}
        assert world.store.latest_rolling_upgrade("web") is None
        # bad input changes nothing: the model is not recorded either
        rec = world.store.get_set("web")
        assert rec.generation == 1 and rec.spec["model"]["image"] == "tiny:1"

    def test_surge_counts_addresses_as_allocation_does(self, world: World) -> None:
        up = make_set(world, rolling={"maxSurge": True})
        # every address the set does not hold is leased to some other machine
        held = {i.ip for i in world.store.list_instances("web")}
        for last in range(2, 255):
            ip = f"192.168.122.{last}"
            if ip not in held:
                world.hv.add_lease("default", ip, "52:54:00:ff:ff:ff")
        with pytest.raises(InvalidInput, match=r"free addresses on default \(0 free\)"):
            up.update("web", {"model": {"image": "tiny:2"}})
        assert world.store.latest_rolling_upgrade("web") is None

    def test_surge_fallback_is_reported(self, world: World) -> None:
        up = make_set(world, rolling={"maxSurge": True})
        world.hv.set_pool_capacity("default", 4 * 2**30)
        up.update("web", {"model": {"image": "tiny:2"}}, allow_surge_fallback=True)
        status = up.latest_status("web")
        assert status["surge"] is False and "fell back to in-place" in status["surgeFallback"]
        assert sorted(gens(world)) == [0, 1, 2]


class TestGracePeriod:
    """A rollout onto a broken image through the CLI: the wait for the batch says how much
    of the grace period is left, and ``--health-probe-fail-fast-after-probes`` cuts it short
    (docs/semantics.md#grace-period)."""

    @pytest.fixture
    def cli(self, world: World, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> FakeCli:
        return install(world, monkeypatch, capsys)

    def roll_onto_broken(self, world: World, cli: FakeCli,
                         *flags: str) -> tuple[int, list[str], float]:
        """(exit code, stderr lines, fake seconds) of `vmss update` of a Rolling set of 2 onto
        a broken image, with ``flags`` given at create."""
        code, _, err = cli.run("vmss", "create", "--name", "web", "--image", "tiny:1",
                               "--instance-count", "2", "--upgrade-policy-mode", "Rolling",
                               "--max-batch-instance-percent", "50",
                               "--max-unhealthy-instance-percent", "50", *flags)
        assert code == 0, err
        world.register_image("tiny", "3")
        break_image(world, "tiny:3")
        started = world.clock.monotonic()
        code, _, err = cli.run("vmss", "update", "--name", "web", "--image", "tiny:3")
        # progress lines start with the command's elapsed time, "[   12.3s] "
        lines = [re.sub(r"^\[\s*[0-9.]+s\] ", "", line) for line in err.splitlines()]
        return code, lines, world.clock.monotonic() - started

    def test_the_wait_says_every_30s_how_much_grace_is_left(
            self, world: World, cli: FakeCli) -> None:
        code, lines, took = self.roll_onto_broken(world, cli)
        errors = [line for line in lines if line.startswith("error:")]
        assert code == 1 and len(errors) == 1 and "Faulted" in errors[0], lines
        unhealthy = [n for n, line in enumerate(lines) if line.startswith("web-0: Unhealthy after")]
        waiting = [line for line in lines if "still within its grace period" in line]
        assert unhealthy and waiting, lines
        # one line about every 30 s of the 300 s default (not one per probe), each saying
        # how long is left and why the instance is not Healthy
        assert 8 <= len(waiting) <= 10, waiting
        assert waiting[0].startswith("web-0: Unhealthy, still within its grace period: 2")
        assert "s of 300s left" in waiting[0] and "health command exit 1" in waiting[0]
        lefts = [int(line.split("grace period: ")[1].split("s of")[0]) for line in waiting]
        assert lefts == sorted(lefts, reverse=True) and lefts[-1] < 30
        assert 300 <= took < 330

    def test_fail_fast_after_probes_gives_the_verdict_after_that_many_failures(
            self, world: World, cli: FakeCli) -> None:
        code, lines, took = self.roll_onto_broken(
            world, cli, "--health-probe-fail-fast-after-probes", "3")
        errors = [line for line in lines if line.startswith("error:")]
        assert code == 1 and len(errors) == 1 and "Faulted" in errors[0], lines
        assert took < 30  # boot, then three failed probes 5 s apart: not 300 s of grace
        assert not [line for line in lines if "still within its grace period" in line]
        assert any(line.startswith("web-0: 3 health probes failed in a row") for line in lines)
        spec = world.env.spec_of("web")
        assert spec.model.health_probe.fail_fast_after_probes == 3
        assert gens(world)[1] == (1, "tiny:1")  # the second batch never started


class TestReimage:
    def test_reimage_keeps_identity_and_data_rotates_host_key(self, world: World) -> None:
        up = make_set(world, mode="Manual")
        before = world.store.find_instance("web", 0)
        assert before is not None
        up.reimage("web", [0])
        after = world.store.find_instance("web", 0)
        assert after is not None
        assert (after.ip, after.mac, after.name) == (before.ip, before.mac, before.name)
        assert after.host_key_public != before.host_key_public
        assert after.seed_instance_id != before.seed_instance_id
        assert after.os_volume == "web-0-os1.qcow2" and "web-0-os0.qcow2" not in os_volumes(world)
        assert world.hv.domain_state("web-0") is PowerState.RUNNING

    def test_all_disks_recreates_data_disks(self, world: World) -> None:
        up = make_set(world, mode="Manual")
        deletes = world.hv.calls.count(("delete_volume", "web-0-data0.qcow2"))
        up.reimage("web", [0], all_disks=True)
        assert world.hv.calls.count(("delete_volume", "web-0-data0.qcow2")) == deletes + 1
        assert "web-0-data0.qcow2" in {v.name for v in world.hv.list_volumes("default")}


class TestBadUpdates:
    def test_network_change_is_refused(self, world: World) -> None:
        up = make_set(world, mode="Manual")
        with pytest.raises(InvalidInput, match="network"):
            up.update("web", {"model": {"network": "orchlab"}})
        assert world.store.get_set("web").generation == 1

    def test_bad_values_change_nothing(self, world: World) -> None:
        up = make_set(world, mode="Manual")
        for changes in ({"model": {"vcpus": 0}}, {"model": {"image": "nope"}},
                        {"rollingUpgradePolicy": {"maxBatchInstancePercent": 1}},
                        {"mode": "Sometimes"}):
            with pytest.raises(InvalidInput):
                up.update("web", changes)
        with pytest.raises(InvalidInput, match="not registered"):
            up.update("web", {"model": {"image": "tiny:9"}})
        assert world.store.get_set("web").generation == 1

    def test_rolling_start_needs_rolling_mode(self, world: World) -> None:
        up = make_set(world, mode="Manual")
        with pytest.raises(InvalidInput, match="mode Rolling"):
            up.start_rolling("web")

    def test_policy_only_change_keeps_generation(self, world: World) -> None:
        up = make_set(world)
        view = up.update("web", {"rollingUpgradePolicy": {"maxBatchInstancePercent": 50}})
        assert view["generation"] == 1
        assert view["upgradePolicy"]["rollingUpgradePolicy"]["maxBatchInstancePercent"] == 50

    def test_apply_changes_model_through_the_policy(self, world: World) -> None:
        up = make_set(world)
        spec = world.service.spec_of(world.store.get_set("web"))
        data = spec.to_json_dict()
        data["model"]["image"] = "tiny:2"
        data["capacity"] = 4
        up.apply(validate(ScaleSetSpec, data))
        assert {g for g, _ in gens(world).values()} == {2} and len(gens(world)) == 4

    def test_apply_of_only_an_automatic_repairs_change_records_it(self, world: World) -> None:
        up = make_set(world)
        data = world.service.spec_of(world.store.get_set("web")).to_json_dict()
        data["automaticRepairsPolicy"] = {"enabled": True, "gracePeriod": "PT30S",
                                          "repairAction": "Restart"}
        view = up.apply(validate(ScaleSetSpec, data))
        assert view["automaticRepairsPolicy"] == data["automaticRepairsPolicy"]
        assert view["generation"] == 1  # a policy change, not a model change
