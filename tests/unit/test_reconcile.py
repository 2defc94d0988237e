"""The reconcile loop (`orch controller run --once`) on the fake hypervisor: interrupted
creates and deletes, recorded model changes, dead rolling-upgrade drivers, crashed guests."""

from __future__ import annotations

import pytest

from orchestrator.engine import operations as ops
from orchestrator.hypervisor.base import PowerState
from orchestrator.model import ScaleSetSpec, validate
from orchestrator.reconcile import Reconciler
from orchestrator.upgrades import Upgrades

from .conftest import World


@pytest.fixture
def upgrades(world: World) -> Upgrades:
    world.register_image("tiny", "2")
    return Upgrades(world.service)


def create(world: World, mode: str = "Rolling", capacity: int = 2) -> None:
    world.service.create(validate(ScaleSetSpec, {
        "name": "web", "capacity": capacity, "model": {"image": "tiny:1"},
        "upgradePolicy": {"mode": mode, "rollingUpgradePolicy": {
            "maxBatchInstancePercent": 50, "maxUnhealthyInstancePercent": 50}}}))


def test_half_created_instance_is_replaced(world: World, upgrades: Upgrades) -> None:
    create(world)
    # a create killed after allocating and provisioning instance 2, before it was recorded
    spec = world.service.spec_of(world.store.get_set("web"))
    image = world.registry.get("tiny:1")
    [new_id] = world.store.take_instance_ids("web", 1)
    inst = ops.allocate(world.service.engine, set_name="web", instance_id=new_id,
                        model=spec.model, generation=1, image=image)
    ops.provision(world.service.engine, inst, spec.model, image, admin_key="ssh-ed25519 AAAA x")
    report = Reconciler(upgrades).run_pass()
    assert any("half-created" in a for a in report.actions), report
    assert [i.instance_id for i in world.store.list_instances("web")] == [0, 1]
    assert "web-2" not in {d.name for d in world.hv.list_domains()}
    assert not [v for v in world.hv.list_volumes("default") if v.name.startswith("web-2-")]


def test_interrupted_delete_is_finished(world: World, upgrades: Upgrades) -> None:
    create(world, capacity=3)
    inst = world.store.find_instance("web", 2)
    assert inst is not None
    world.store.update_instance(inst, status="deleting")
    data = world.service.spec_of(world.store.get_set("web")).to_json_dict()
    world.store.update_spec("web", {**data, "capacity": 2}, new_generation=False, now="x")
    Reconciler(upgrades).run_pass()
    assert [i.instance_id for i in world.store.list_instances("web")] == [0, 1]
    assert "web-2" not in {d.name for d in world.hv.list_domains()}


def test_missing_instances_are_created_to_capacity(world: World, upgrades: Upgrades) -> None:
    create(world, capacity=2)
    data = world.service.spec_of(world.store.get_set("web")).to_json_dict()
    world.store.update_spec("web", {**data, "capacity": 3}, new_generation=False, now="x")
    Reconciler(upgrades).run_pass()
    assert len(world.store.list_instances("web")) == 3


def test_recorded_model_change_is_rolled_out(world: World, upgrades: Upgrades) -> None:
    create(world, mode="Automatic")
    upgrades.update("web", {"model": {"image": "tiny:2"}}, wait=False)  # --no-wait
    assert {i.model_generation for i in world.store.list_instances("web")} == {1}
    Reconciler(upgrades).run_pass()
    assert {i.model_generation for i in world.store.list_instances("web")} == {2}


def test_rolling_upgrade_of_a_dead_process_is_resumed(world: World, upgrades: Upgrades) -> None:
    create(world, mode="Rolling")
    upgrades.update("web", {"model": {"image": "tiny:2"}}, wait=False)
    rec = world.store.add_rolling_upgrade("web", target_generation=2, policy={}, progress={},
                                          now="x")
    world.store.update_rolling_upgrade(rec, detail={"pid": 2**22 + 7})  # no such process
    report = Reconciler(upgrades).run_pass()
    assert any("resuming" in a for a in report.actions), report
    assert {i.model_generation for i in world.store.list_instances("web")} == {2}
    latest = world.store.latest_rolling_upgrade("web")
    assert latest is not None and latest.status == "Completed"
    assert world.store.get_rolling_upgrade(rec.id).status == "Cancelled"


def test_crashed_instance_is_restarted_and_a_second_pass_does_nothing(
        world: World, upgrades: Upgrades) -> None:
    create(world)
    world.hv.crash("web-1")
    assert world.hv.domain_state("web-1") is PowerState.CRASHED
    Reconciler(upgrades).run_pass()
    assert world.hv.domain_state("web-1") is PowerState.RUNNING
    calls = len(world.hv.calls)
    report = Reconciler(upgrades).run_pass()
    assert report.actions == [] and report.problems == []
    assert not [c for c in world.hv.calls[calls:] if c[0] in ("define_domain", "start", "destroy")]


def test_stopped_by_the_user_stays_stopped(world: World, upgrades: Upgrades) -> None:
    create(world)
    world.service.power("web", [0], "stop")
    Reconciler(upgrades).run_pass()
    assert world.hv.domain_state("web-0") is PowerState.STOPPED
