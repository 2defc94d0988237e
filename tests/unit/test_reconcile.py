"""The reconcile loop (`orch controller run --once`) on the fake hypervisor: interrupted
creates and deletes, recorded model changes, dead rolling-upgrade drivers, crashed guests."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.engine import addresses, steps
from orchestrator.errors import HypervisorError, OrchError
from orchestrator.hypervisor.base import PowerState
from orchestrator.model import ScaleSetSpec, validate
from tests.world import Reconciler, Upgrades, World, run


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
    inst = run(addresses.allocate(world.service.engine, set_name="web", instance_id=new_id,
                        model=spec.model, generation=1, image=image))
    run(steps.provision(world.service.engine, inst, spec.model, image, admin_key="ssh-ed25519 AAAA x"))
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


# --- the step journal ------------------------------------------------------------------------
def _steps(world: World, kind: str) -> list[tuple[str, str, str]]:
    op = [o for o in world.service.operations_view("web") if o["kind"] == kind][-1]
    return [(s["instance"], s["step"], s["status"]) for s in op["steps"]]


def test_each_step_is_journaled_before_and_after(world: World, upgrades: Upgrades) -> None:
    create(world)
    assert _steps(world, "create") == [("web-0", "provision", "done"),
                                       ("web-1", "provision", "done")]
    upgrades.update("web", {"model": {"image": "tiny:2"}})
    steps = _steps(world, "update")
    for name in ("web-0", "web-1"):
        assert steps.index((name, "apply-model", "done")) < steps.index(
            (name, "commit-model", "done"))
    world.hv.fail_next("start", HypervisorError("no start"))
    with pytest.raises(OrchError):
        world.service.power("web", [1], "restart")
    assert _steps(world, "restart") == [("web-1", "power-off", "done"),
                                        ("web-1", "start", "failed")]


class Killed(BaseException):
    """SIGKILL: nothing the process would have written after it happens."""


def test_a_killed_process_leaves_its_step_started_and_the_resume_names_it(
        world: World, upgrades: Upgrades, monkeypatch: pytest.MonkeyPatch) -> None:
    create(world)
    real_define, real_transaction = world.hv.define_domain, world.store.transaction
    dead = False

    def define(domain: Any) -> None:
        nonlocal dead
        if domain.name == "web-0":
            dead = True
            raise Killed()
        real_define(domain)

    def transaction() -> Any:
        if dead:
            raise Killed()
        return real_transaction()

    monkeypatch.setattr(world.hv, "define_domain", define)
    monkeypatch.setattr(world.store, "transaction", transaction)
    with pytest.raises(Killed):
        upgrades.update("web", {"model": {"image": "tiny:2"}})
    monkeypatch.undo()
    assert ("web-0", "apply-model", "started") in _steps(world, "update")
    # the process is gone: its operation and rolling upgrade name a pid that no longer runs
    world.store._db.execute("UPDATE operations SET pid=? WHERE status='running'", (2**22 + 7,))
    latest = world.store.latest_rolling_upgrade("web")
    assert latest is not None
    world.store.update_rolling_upgrade(latest, detail={**latest.detail, "pid": 2**22 + 7})

    report = Reconciler(upgrades).run_pass()
    assert any("interrupted; during apply-model of web-0" in a for a in report.actions), report
    op = next(o for o in world.service.operations_view("web") if o["kind"] == "update")
    assert op["status"] == "interrupted" and "apply-model of web-0" in op["error"]
    assert ("web-0", "apply-model", "interrupted") in [
        (s["instance"], s["step"], s["status"]) for s in op["steps"]]
    assert {i.model_generation for i in world.store.list_instances("web")} == {2}


# --- observed libvirt state wins ----------------------------------------------------------
def test_objects_of_the_set_no_instance_owns_are_removed(world: World,
                                                         upgrades: Upgrades) -> None:
    create(world)
    before = world.resources()
    # what a lost store row leaves: instance 7's domain, disks, console log and reservation
    spec = world.service.spec_of(world.store.get_set("web"))
    image = world.registry.get("tiny:1")
    inst = run(addresses.allocate(world.service.engine, set_name="web", instance_id=7, model=spec.model,
                        generation=1, image=image))
    run(steps.provision(world.service.engine, inst, spec.model, image, admin_key="ssh-ed25519 AAAA x"))
    world.store.delete_instance("web", 7)
    # look-alikes that are not the set's: another set named web-0's volume, a foreign domain
    world.hv.create_volume("default", name="web-0-data-notes.qcow2", capacity_bytes=1)
    assert world.resources() != before

    report = Reconciler(upgrades).run_pass()
    assert any("1 domain(s), 3 volume(s), 1 DHCP reservation(s)" in a
               for a in report.actions), report
    domains, volumes, reservations = world.resources()
    assert (domains, volumes - {"web-0-data-notes.qcow2"}, reservations) == before
    assert "web-0-data-notes.qcow2" in volumes
    assert Reconciler(upgrades).run_pass().actions == []


def test_an_instance_whose_domain_vanished_is_defined_again_on_its_disks(
        world: World, upgrades: Upgrades) -> None:
    create(world)
    inst = world.store.find_instance("web", 1)
    assert inst is not None
    world.hv.destroy("web-1")
    world.hv.undefine("web-1")  # virsh undefine by hand: the disks stay
    volumes_before = world.resources()[1]

    report = Reconciler(upgrades).run_pass()
    assert any("web-1: its domain is gone" in a for a in report.actions), report
    assert world.hv.domain_state("web-1") is PowerState.RUNNING
    assert world.resources()[1] == volumes_before  # the same OS disk, nothing new
    owner = world.hv.domain_owner("web-1")
    assert owner is not None and (owner.set_name, owner.instance_id) == ("web", 1)
    again = world.store.find_instance("web", 1)
    assert again is not None and (again.mac, again.ip) == (inst.mac, inst.ip)
    assert Reconciler(upgrades).run_pass().actions == []


def test_a_domain_redefined_by_a_killed_update_is_recorded_at_its_generation(
        world: World, upgrades: Upgrades, monkeypatch: pytest.MonkeyPatch) -> None:
    """Manual mode: nobody would redo the update, so the store must learn what libvirt
    runs (uncommitted: the old OS disk is kept for a rollback)."""
    create(world, mode="Manual")
    upgrades.update("web", {"model": {"image": "tiny:2"}})
    old = world.store.find_instance("web", 0)
    assert old is not None and old.model_generation == 1

    def killed_after_start(name: str) -> None:
        raise Killed()  # the domain is defined on generation 2; nothing more is recorded

    monkeypatch.setattr(world.hv, "start", killed_after_start)
    monkeypatch.setattr(world.store, "update_instance", lambda *a, **k: (_ for _ in ()).throw(
        Killed()))
    with pytest.raises(Killed):
        upgrades.update_instances("web", [0])
    monkeypatch.undo()
    owner = world.hv.domain_owner("web-0")
    assert owner is not None and owner.generation == 2
    assert world.store.find_instance("web", 0) == old

    report = Reconciler(upgrades).run_pass()
    assert any("web-0: its domain runs generation 2, not 1" in a for a in report.actions), report
    inst = world.store.find_instance("web", 0)
    assert inst is not None
    assert (inst.model_generation, inst.image) == (2, "tiny:2")
    assert world.hv.domain_state("web-0") is PowerState.RUNNING  # started as the user wants
    # recorded uncommitted, then found healthy on its new model in the same pass: committed,
    # the old OS disk removed
    assert any("web-0: healthy on its new model" in a for a in report.actions), report
    volumes = world.resources()[1]
    assert inst.os_volume in volumes and old.os_volume not in volumes
    assert inst.prev_os_volume == "" and inst.prev_generation == 0
    assert Reconciler(upgrades).run_pass().actions == []


def test_the_next_command_on_a_set_resumes_what_a_killed_one_left(
        world: World, upgrades: Upgrades) -> None:
    create(world, capacity=2)
    # a scale-out killed after provisioning instance 2, before it was recorded as made
    spec = world.service.spec_of(world.store.get_set("web"))
    image = world.registry.get("tiny:1")
    [new_id] = world.store.take_instance_ids("web", 1)
    op_id = world.store.start_operation("web", "scale", {}, now="x")
    world.service.engine.operation_id = op_id
    inst = run(addresses.allocate(world.service.engine, set_name="web", instance_id=new_id,
                        model=spec.model, generation=1, image=image))
    with world.service.engine.step(inst, "provision"):
        run(steps.provision(world.service.engine, inst, spec.model, image, admin_key="ssh-ed25519 x"))
    world.service.engine.operation_id = None
    world.store._db.execute("UPDATE operations SET pid=? WHERE id=?", (2**22 + 7, op_id))

    world.service.power("web", [0], "restart")  # any command that takes the set's lock
    assert any(f"scale (operation {op_id}) was interrupted" in line for line in world.lines)
    assert any("web-2: removing a half-created instance" in line for line in world.lines)
    assert [i.instance_id for i in world.store.list_instances("web")] == [0, 1]
    assert "web-2" not in world.resources()[0]
    ops_by_id = {o["id"]: o for o in world.service.operations_view("web")}
    assert ops_by_id[op_id]["status"] == "interrupted"
    restart = [o for o in ops_by_id.values() if o["kind"] == "restart"][-1]
    assert restart["status"] == "succeeded"
    assert [(s["instance"], s["step"]) for s in restart["steps"]] == [
        ("web-2", "teardown"), ("web-0", "power-off"), ("web-0", "start")]


def _zombie() -> subprocess.Popen[bytes]:
    """A child that has exited and is not reaped: ``kill(pid, 0)`` still finds it."""
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    stat = Path(f"/proc/{child.pid}/stat")
    while stat.read_text().split(")")[-1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.01)
    return child


def test_a_killed_driver_that_lingers_as_a_zombie_is_resumed_at_once(
        world: World, upgrades: Upgrades) -> None:
    """A `vmss update` SIGKILLed mid-batch on a host whose PID 1 does not reap: its pid
    still exists, but its lock is gone, and the next pass resumes the upgrade."""
    create(world, capacity=2)
    upgrades.update("web", {"model": {"image": "tiny:2"}}, wait=False)
    zombie = _zombie()
    try:
        op_id = world.store.start_operation("web", "update", {}, now="x")
        world.store._db.execute("UPDATE operations SET pid=? WHERE id=?", (zombie.pid, op_id))
        row = world.store.add_rolling_upgrade(
            "web", target_generation=2, policy=world.service.spec_of(
                world.store.get_set("web")).upgrade_policy.rolling_upgrade_policy.to_json_dict(),
            progress={}, now="x")
        world.store.update_rolling_upgrade(row, detail={"pid": zombie.pid, "batches": []})

        report = Reconciler(upgrades).run_pass()
    finally:
        zombie.wait()
    assert any("resuming an interrupted rolling upgrade" in a for a in report.actions), report
    assert {i.model_generation for i in world.store.list_instances("web")} == {2}
    assert upgrades.latest_status("web")["runningStatus"]["code"] == "Completed"
    op = next(o for o in world.service.operations_view("web") if o["id"] == op_id)
    assert op["status"] == "interrupted"
