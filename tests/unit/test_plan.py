"""`orch vmss plan` (docs/semantics.md#status) on the fake world: what an update would do,
batch by batch, predicted by running the real upgrade code on a simulated copy; each
prediction is checked against the real (fake-hypervisor) update run afterwards, and the plan
changes nothing."""

from __future__ import annotations

import gc
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.dryrun import plan as planning
from orchestrator.dryrun.simworld import measure_timings
from orchestrator.errors import OperationFailed
from orchestrator.hypervisor.base import MUTATING_VERBS
from orchestrator.model import ScaleSetSpec, validate
from orchestrator.store import InstanceRecord
from tests.world import Upgrades, World, make_world, snapshot

from .fakecli import FakeCli, install


def make_set(world: World, *, mode: str = "Rolling", capacity: int = 5,
             **rolling: Any) -> Upgrades:
    """Set ``web`` of ``capacity`` healthy instances on tiny:1; tiny:2 registered."""
    world.register_image("tiny", "2")
    world.service.create(validate(ScaleSetSpec, {
        "name": "web", "capacity": capacity, "model": {"image": "tiny:1"},
        "upgradePolicy": {"mode": mode, "rollingUpgradePolicy": rolling}}))
    return Upgrades(world.service)


def plan(cli: FakeCli, *args: str) -> dict[str, Any]:
    code, out, err = cli.run("vmss", "plan", "--name", "web", *args, "-o", "json")
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def batches(result: dict[str, Any]) -> list[list[int]]:
    return [b["instances"] for b in result["batches"]]


def mark_unhealthy(world: World, *ids: int) -> None:
    """Instances whose health command fails from now on, as the store records it."""
    for i in ids:
        world.prober.unhealthy.add(f"web-{i}")
    world.service.refresh_health("web")


class TestPredictions:
    def test_rolling_in_place_five_batches_of_one(self, world: World, cli: FakeCli) -> None:
        up = make_set(world, maxBatchInstancePercent=20)
        result = plan(cli, "--image", "tiny:2")
        assert result["outcome"] == "Completed" and result["error"] is None
        assert batches(result) == [[0], [1], [2], [3], [4]]
        assert {b["action"] for b in result["batches"]} == {"in place"}
        assert (result["mode"], result["fromGeneration"], result["toGeneration"]) == (
            "Rolling", 1, 2)
        assert "20% of 5 instances = 1 per batch" in result["thresholds"][0]
        # each batch starts when the one before ends
        windows = [(b["startSeconds"], b["endSeconds"]) for b in result["batches"]]
        assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))
        assumed = result["assumptions"]
        per_batch = assumed["shutdownSeconds"] + assumed["bootSeconds"]
        assert result["predictedSeconds"] == pytest.approx(5 * per_batch, rel=0.1)
        assert assumed["summary"].startswith("predicted with boot 7.0 s measured on 5 instances")
        # the real upgrade on the fake hypervisor takes what the plan said
        started = world.clock.monotonic()
        up.update("web", {"model": {"image": "tiny:2"}})
        assert world.clock.monotonic() - started == pytest.approx(
            result["predictedSeconds"], rel=0.05)
        assert [b["instances"] for b in up.latest_status("web")["batches"]] == batches(result)

    def test_surge_gives_new_ids(self, world: World, cli: FakeCli) -> None:
        up = make_set(world, maxSurge=True)
        result = plan(cli, "--image", "tiny:2")
        assert result["outcome"] == "Completed" and result["maxSurge"] is True
        assert batches(result) == [[0], [1], [2], [3], [4]]
        assert [b["newInstances"] for b in result["batches"]] == [[5], [6], [7], [8], [9]]
        assert {b["action"] for b in result["batches"]} == {"surge"}
        assert result["instances"][0]["action"] == "replaced by new instance 5"
        up.update("web", {"model": {"image": "tiny:2"}})
        assert [i.instance_id for i in world.store.list_instances("web")] == [5, 6, 7, 8, 9]

    def test_automatic_is_one_batch_of_all(self, world: World, cli: FakeCli) -> None:
        make_set(world, mode="Automatic")
        result = plan(cli, "--image", "tiny:2")
        assert result["outcome"] == "Completed"
        assert batches(result) == [[0, 1, 2, 3, 4]]
        # at once: about one instance's shutdown and boot, not five
        assert 5 < result["predictedSeconds"] < 15

    def test_manual_rolls_nothing(self, world: World, cli: FakeCli) -> None:
        make_set(world, mode="Manual")
        result = plan(cli, "--image", "tiny:2")
        assert result["outcome"] == "Manual"
        assert result["batches"] == [] and result["predictedSeconds"] == 0.0
        assert result["toGeneration"] == 2
        assert "update-instances --name web --instance-ids 0 1 2 3 4" in result["notes"][0]
        assert {i["action"] for i in result["instances"]} == {
            "none: Manual mode (`update-instances` applies the latest model)"}

    def test_unhealthy_beyond_the_threshold_faults_as_the_real_upgrade(
            self, world: World, cli: FakeCli) -> None:
        up = make_set(world)  # 20% of 5 = 1 unhealthy allowed
        mark_unhealthy(world, 1, 3)
        result = plan(cli, "--image", "tiny:2")
        assert result["outcome"] == "Faulted" and result["batches"] == []
        assert result["error"].startswith("2 of 5 instances are unhealthy before the next batch")
        with pytest.raises(OperationFailed):
            up.update("web", {"model": {"image": "tiny:2"}})
        assert up.latest_status("web")["error"]["message"] == result["error"]

    @pytest.mark.parametrize(("prioritize", "first"), [(True, [3]), (False, [0])])
    def test_prioritize_unhealthy_puts_it_first(self, world: World, cli: FakeCli,
                                                prioritize: bool, first: list[int]) -> None:
        make_set(world, prioritizeUnhealthyInstances=prioritize)
        mark_unhealthy(world, 3)
        result = plan(cli, "--image", "tiny:2")
        assert batches(result)[0] == first
        assert result["assumptions"]["unhealthyInstances"] == [3]
        assert "instances 3 are unhealthy now" in result["assumptions"]["health"][0]

    def test_a_stopped_instance_counts_unhealthy_until_upgraded(
            self, world: World, cli: FakeCli) -> None:
        up = make_set(world, prioritizeUnhealthyInstances=True)
        world.service.power("web", [4], "stop")
        result = plan(cli, "--image", "tiny:2")
        assert result["assumptions"]["stoppedInstances"] == [4]
        assert result["outcome"] == "Completed"
        assert batches(result) == [[4], [0], [1], [2], [3]]
        up.update("web", {"model": {"image": "tiny:2"}})
        assert [b["instances"] for b in up.latest_status("web")["batches"]] == batches(result)

    def test_without_change_flags_plans_rolling_upgrade_start(
            self, world: World, cli: FakeCli) -> None:
        up = make_set(world, maxBatchInstancePercent=40)
        up.update("web", {"model": {"image": "tiny:2"}}, wait=False)  # recorded, not rolled
        up.update_instances("web", [0])
        result = plan(cli)
        assert (result["fromGeneration"], result["toGeneration"]) == (2, 2)
        assert batches(result) == [[1, 2], [3, 4]]
        up.start_rolling("web")
        assert plan(cli)["outcome"] == "NothingToDo"

    def test_surge_without_room_is_refused_as_by_update(self, world: World,
                                                        cli: FakeCli) -> None:
        make_set(world, maxSurge=True)
        pool = world.hv.pool_info("default")
        used = pool.capacity_bytes - pool.available_bytes
        world.hv.set_pool_capacity("default", used + 2**20)  # 1 MiB free: no room for a batch
        fallback = plan(cli, "--image", "tiny:2", "--allow-surge-fallback")
        assert fallback["maxSurge"] is False and fallback["outcome"] == "Completed"
        assert any("fell back to in-place" in note for note in fallback["notes"])
        code, out, err = cli.run("vmss", "plan", "--name", "web", "--image", "tiny:2")
        assert code == 2 and out == "" and "maxSurge needs" in err, err
        assert "in pool default (1 MiB free)" in err
        code, out, real = cli.run("vmss", "update", "--name", "web", "--image", "tiny:2")
        assert (code, out, real.splitlines()[-1]) == (2, "", err.strip())

    def test_surge_without_memory_is_refused_as_by_update(self, world: World,
                                                          cli: FakeCli) -> None:
        make_set(world, maxSurge=True)  # 5 instances of 256 MiB run
        world.hv.set_memory_available((5 * 256 + 100) * 2**20)  # 100 MiB left for a new one
        code, out, err = cli.run("vmss", "plan", "--name", "web", "--image", "tiny:2")
        assert code == 2 and out == "" and "maxSurge needs" in err, err
        assert "256 MiB of memory (100 MiB available)" in err
        code, out, real = cli.run("vmss", "update", "--name", "web", "--image", "tiny:2")
        assert (code, out, real.splitlines()[-1]) == (2, "", err.strip())

    def test_table_output(self, world: World, cli: FakeCli) -> None:
        make_set(world)
        code, out, err = cli.run("vmss", "plan", "--name", "web", "--image", "tiny:2")
        assert code == 0, err
        assert "plan for web: Rolling, generation 1 -> 2" in out
        assert "BATCH" in out and "in place" in out
        assert "outcome: Completed after" in out
        assert "predicted with boot 7.0 s measured on 5 instances" in out


class TestSurgeRoomOnEveryLayout:
    """`vmss plan --max-surge true` judges the room for a surge batch on the pools the set's
    hosts really have: the lab's single host with its pool ``orchlab`` (ORCH_POOL), and
    registered hosts whose pools are named otherwise (the lab's ``lab-N``), also with the
    set still on the implicit host, made before the hosts were registered."""

    LAYOUTS = ("lab-pool", "hosts-with-their-own-pools", "hosts-and-default-pool",
               "local-then-hosts")

    def add_hosts(self, world: World) -> None:
        for n in (1, 2):
            world.add_host(f"lab-{n}", fault_domain=f"fd-{n}", pool=f"lab-{n}",
                           network=f"lab-{n}")

    def world_of(self, tmp_path: Path, layout: str) -> World:
        world = make_world(tmp_path / "world", pool="default" if layout.endswith(
            "default-pool") else "orchlab")
        if layout.startswith("hosts"):
            self.add_hosts(world)
        world.register_image("tiny", "2")
        return world

    @pytest.fixture(params=LAYOUTS)
    def lab(self, request: pytest.FixtureRequest, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
            ) -> tuple[World, FakeCli]:
        world = self.world_of(tmp_path, request.param)
        cli = install(world, monkeypatch, capsys)
        code, _, err = cli.run("vmss", "create", "--name", "web", "--image", "tiny:1",
                               "--instance-count", "2", "--network", "orchlab",
                               "--upgrade-policy-mode", "Rolling")
        assert code == 0, err
        if request.param == "local-then-hosts":
            self.add_hosts(world)
            assert {i.host for i in world.store.list_instances("web")} == {"local"}
        return world, cli

    @pytest.mark.parametrize("image", ["tiny:1", "tiny:2"])
    def test_the_surge_verdict_is_given_and_nothing_changes(
            self, lab: tuple[World, FakeCli], image: str) -> None:
        world, cli = lab
        before = snapshot(world.state_dir)
        code, out, err = cli.run("vmss", "plan", "--name", "web", "--image", image,
                                 "--max-surge", "true", "-o", "json")
        assert code == 0, err
        result = json.loads(out)
        assert result["maxSurge"] is True
        if image == "tiny:1":  # the policy changes, the model does not: nothing to roll
            assert result["outcome"] == "NothingToDo" and result["batches"] == []
        else:
            assert result["outcome"] == "Completed", result
            assert {b["action"] for b in result["batches"]} == {"surge"}
            assert sum(len(b["newInstances"]) for b in result["batches"]) == 2
        assert snapshot(world.state_dir) == before

    def test_no_room_in_the_hosts_pools_is_refused_naming_what_is_missing(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> None:
        world = self.world_of(tmp_path, "hosts-with-their-own-pools")
        cli = install(world, monkeypatch, capsys)
        assert cli.run("vmss", "create", "--name", "web", "--image", "tiny:1",
                       "--instance-count", "2", "--network", "orchlab",
                       "--upgrade-policy-mode", "Rolling")[0] == 0
        for n in (1, 2):
            hv = world.fakes[f"qemu+tcp://lab-{n}/system"]
            info = hv.pool_info(f"lab-{n}")
            hv.set_pool_capacity(f"lab-{n}", info.capacity_bytes - info.available_bytes + 2**20)
        before = snapshot(world.state_dir)
        code, out, err = cli.run("vmss", "plan", "--name", "web", "--image", "tiny:2",
                                 "--max-surge", "true")
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert "maxSurge needs" in err and "lab-1: 1 MiB free in its pool" in err
        assert snapshot(world.state_dir) == before
        code, out, real = cli.run("vmss", "update", "--name", "web", "--image", "tiny:2",
                                  "--max-surge", "true")
        assert (code, out, real) == (2, "", err)  # the verdict the real update gives


class TestChangesNothing:
    def test_store_and_hypervisor_untouched(self, world: World, cli: FakeCli) -> None:
        make_set(world, maxSurge=True)
        mark_unhealthy(world, 2)
        before = snapshot(world.state_dir)
        calls = len(world.hv.calls)
        domains = {d.name: d.state for d in world.hv.list_domains()}
        result = plan(cli, "--image", "tiny:2", "--max-unhealthy-upgraded-instance-percent", "100")
        assert result["outcome"] == "Completed" and len(result["batches"]) == 5  # it did simulate
        made = world.hv.calls[calls:]
        assert made and not [c for c in made if c[0] in MUTATING_VERBS], made
        assert snapshot(world.state_dir) == before
        assert {d.name: d.state for d in world.hv.list_domains()} == domains
        assert world.store.latest_rolling_upgrade("web") is None

    def test_the_garbage_collector_is_left_as_it_was(self, world: World, cli: FakeCli,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
        make_set(world)
        frozen_while_simulating: list[int] = []
        simulate = planning._simulate

        async def watched(*args: Any, **kwargs: Any) -> dict[str, Any]:
            frozen_while_simulating.append(gc.get_freeze_count())
            return await simulate(*args, **kwargs)

        monkeypatch.setattr(planning, "_simulate", watched)
        assert gc.get_freeze_count() == 0
        plan(cli, "--image", "tiny:2")
        assert frozen_while_simulating[0] > 0 and gc.get_freeze_count() == 0
        # a heap someone else froze stays frozen
        gc.freeze()
        try:
            plan(cli, "--image", "tiny:2")
            assert gc.get_freeze_count() > 0  # not unfrozen under its owner
        finally:
            gc.unfreeze()

    @pytest.mark.parametrize(("args", "problem"), [
        (("--name", "nope", "--image", "tiny:2"), "scale set nope not found"),
        (("--name", "web", "--image", "tiny"), "image"),
        (("--name", "web", "--image", "nope:1"), "not registered"),
        (("--name", "web", "--max-batch-instance-percent", "3"), "maxBatchInstancePercent"),
        (("--name", "web", "--memory", "0"), "memoryMiB"),
        (("--name", "web", "--custom-data", "/nonexistent/file"), "--custom-data"),
    ], ids=["unknown-set", "bad-ref", "unregistered", "batch-3", "memory-0", "custom-data"])
    def test_bad_input_exits_2_as_update_does(self, world: World, cli: FakeCli,
                                              args: tuple[str, ...], problem: str) -> None:
        make_set(world)
        before = snapshot(world.state_dir)
        calls = len(world.hv.calls)
        code, out, err = cli.run("vmss", "plan", *args)
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert problem in err
        assert world.hv.calls[calls:] == []  # refused before libvirt is asked anything
        assert cli.run("vmss", "update", *args) == (code, out, err)
        assert snapshot(world.state_dir) == before


def record(health: dict[str, Any]) -> InstanceRecord:
    return InstanceRecord(
        set_name="web", instance_id=0, name="web-0", status="active", mac="", ip="",
        network="default", model_generation=1, image="tiny:1", host_key_public="",
        host_key_private="", seed_instance_id="", protect_from_scale_in=False,
        protect_from_scale_set_actions=False, power_intent="running", health=health,
        created_at="")


def healthy_after(seconds: float, state: str = "Healthy") -> InstanceRecord:
    return record({"state": state, "bootedAt": "2026-01-01T00:00:00.000+00:00",
                   "changedAt": f"2026-01-01T00:00:{seconds:06.3f}+00:00"})


class TestTimings:
    def test_median_of_measured_boots(self) -> None:
        t = measure_timings([healthy_after(7.1), healthy_after(9.0), healthy_after(6.0),
                             healthy_after(3.0, "Unhealthy"), healthy_after(59.0),
                             record({})], grace_seconds=30)
        assert (t.boot_samples, t.shutdown_seconds) == (3, 1.5)
        assert t.boot_seconds == pytest.approx(7.1, abs=0.001)
        assert t.summary() == ("predicted with boot 7.1 s measured on 3 instances, "
                               "shutdown 1.5 s (default)")

    def test_default_when_nothing_measured(self) -> None:
        t = measure_timings([record({}), healthy_after(4.0, "Unknown")], grace_seconds=300)
        assert (t.boot_seconds, t.boot_samples, t.shutdown_seconds) == (6.5, 0, 1.5)
        assert t.guest_boot_seconds == 6.5
        assert t.summary() == "predicted with boot 6.5 s (default), shutdown 1.5 s (default)"
