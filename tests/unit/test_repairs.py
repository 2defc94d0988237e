"""Automatic repairs (usecases.repairs) on the fake world with a fake clock: each action, the
grace period, the 5 % cap, what blocks a repair, suspension after three failures and resume,
the journal and `vmss show`."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.cli import render
from orchestrator.errors import InvalidInput
from orchestrator.model import ScaleSetSpec, validate
from orchestrator.usecases import repairs, views
from orchestrator.usecases.recovery import PassReport
from tests.world import Reconciler, Upgrades, World, run

GRACE = 30.0


def spec(capacity: int, action: str = "Replace", **repair: Any) -> ScaleSetSpec:
    return validate(ScaleSetSpec, {
        "name": "web", "capacity": capacity, "model": {"image": "tiny:1"},
        "automaticRepairsPolicy": {"enabled": True, "gracePeriod": "PT30S",
                                   "repairAction": action, **repair}})


def controller_pass(world: World) -> PassReport:
    return Reconciler(Upgrades(world.service)).run_pass()


def ids(world: World) -> list[int]:
    return [i.instance_id for i in world.store.list_instances("web")]


def repair_ops(world: World) -> list[Any]:
    return [op for op in world.store.list_operations("web") if op.kind == "repair"]


def service(world: World) -> str:
    shown = render.set_json(views.show_set(world.env, "web"))["orchestrationServices"]
    assert [s["serviceName"] for s in shown] == ["AutomaticRepairs"]
    return str(shown[0]["serviceState"])


def sicken(world: World, instance_id: int) -> None:
    """The instance's health command starts failing; one pass sees it Unhealthy."""
    world.prober.unhealthy.add(f"web-{instance_id}")
    assert controller_pass(world).actions == []  # within the grace period: nothing yet


def test_replace_after_the_grace_period(world: World) -> None:
    world.service.create(spec(2))
    assert service(world) == "Running"
    sicken(world, 0)
    world.clock.advance(GRACE - 5)
    assert controller_pass(world).actions == [] and ids(world) == [0, 1]
    world.clock.advance(10)
    report = controller_pass(world)
    assert any("repairing instances [0] (Replace)" in a for a in report.actions), report
    assert ids(world) == [1, 2]  # a new instance in its place, the old one deleted
    assert world.store.find_instance("web", 2).health["state"] == "Healthy"  # type: ignore[union-attr]
    [op] = repair_ops(world)
    assert (op.status, op.detail["action"], op.detail["repaired"]) == ("succeeded", "Replace", [0])
    assert world.store.service("web", "AutomaticRepairs").failures == 0  # type: ignore[union-attr]


def test_restart_repairs_a_wedged_guest(world: World) -> None:
    world.service.create(spec(2, action="Restart"))
    sicken(world, 1)
    real_start = world.hv.start

    def start(name: str) -> None:  # the guest comes back well after a restart
        world.prober.unhealthy.discard(name)
        real_start(name)

    world.hv.start = start  # type: ignore[method-assign]
    world.clock.advance(GRACE + 1)
    controller_pass(world)
    assert ids(world) == [0, 1]  # same instance, restarted
    assert ("shutdown", "web-1") in world.hv.calls and ("start", "web-1") in world.hv.calls
    assert world.store.find_instance("web", 1).health["state"] == "Healthy"  # type: ignore[union-attr]
    assert [op.status for op in repair_ops(world)] == ["succeeded"]


def test_reimage_keeps_identity_and_three_failures_suspend(world: World) -> None:
    world.service.create(spec(1, action="Reimage"))
    seed = world.store.find_instance("web", 0).seed_instance_id  # type: ignore[union-attr]
    sicken(world, 0)  # and it stays sick whatever is done to it
    for n in (1, 2, 3):
        world.clock.advance(GRACE + 1)
        controller_pass(world)
        assert len(repair_ops(world)) == n
        assert world.store.service("web", "AutomaticRepairs").failures == n  # type: ignore[union-attr]
    inst = world.store.find_instance("web", 0)
    assert inst is not None and inst.seed_instance_id != seed  # reimaged: a new cloud-init id
    assert [op.status for op in repair_ops(world)] == ["failed"] * 3
    assert service(world) == "Suspended"
    world.clock.advance(GRACE * 10)
    controller_pass(world)
    assert len(repair_ops(world)) == 3  # suspended: no more repairs
    assert run(repairs.set_service_state(world.env, "web", service="AutomaticRepairs",
                                         action="Resume")) == "Running"
    assert world.store.service("web", "AutomaticRepairs").failures == 0  # type: ignore[union-attr]
    controller_pass(world)
    assert len(repair_ops(world)) == 4  # resumed: repaired again


def test_at_most_five_percent_at_once(world: World) -> None:
    world.service.create(spec(40))
    for i in range(5):
        world.prober.unhealthy.add(f"web-{i}")
    controller_pass(world)
    world.clock.advance(GRACE + 1)
    controller_pass(world)
    [op] = repair_ops(world)
    assert len(op.detail["instances"]) == 2  # 5 % of 40


def test_protected_instances_and_rolling_upgrades_block_repairs(world: World) -> None:
    world.service.create(spec(2))
    world.service.protect("web", 0, scale_in=None, set_actions=True)
    sicken(world, 0)
    world.clock.advance(GRACE + 1)
    controller_pass(world)
    assert repair_ops(world) == [] and ids(world) == [0, 1]
    world.prober.unhealthy.add("web-1")
    world.store.add_rolling_upgrade("web", target_generation=1, policy={}, progress={},
                                    now=world.env.engine.now())
    controller_pass(world)  # resumes the upgrade (nothing to do) ...
    world.store.add_rolling_upgrade("web", target_generation=1, policy={}, progress={},
                                    now=world.env.engine.now())
    assert run(_due(world)) == []  # ... and while one runs, nothing is repaired


async def _due(world: World) -> list[int]:
    from orchestrator.usecases.session import open_session

    async with open_session(world.env, "web", "resume") as session:
        return await repairs.due(session)


def test_repairs_off_is_not_running_and_stopped_instances_are_left(world: World) -> None:
    world.service.create(validate(ScaleSetSpec, {"name": "web", "capacity": 1,
                                                 "model": {"image": "tiny:1"}}))
    assert service(world) == "NotRunning"
    world.prober.unhealthy.add("web-0")
    world.clock.advance(GRACE * 100)
    controller_pass(world)
    assert repair_ops(world) == []


def test_bad_service_input_changes_nothing(world: World) -> None:
    world.service.create(spec(1))
    for kwargs in ({"service": "Nope", "action": "Suspend"},
                   {"service": "AutomaticRepairs", "action": "Pause"}):
        with pytest.raises(InvalidInput):
            run(repairs.set_service_state(world.env, "web", **kwargs))
    assert world.store.service("web", "AutomaticRepairs") is None


@pytest.mark.parametrize("grace", ["PT29S", "PT0S", "10M", "P2D"])
def test_a_grace_period_under_thirty_seconds_or_malformed_is_refused(grace: str) -> None:
    with pytest.raises(InvalidInput):
        spec(1, gracePeriod=grace)


def test_across_hosts_a_replacement_stays_in_its_fault_domain_and_silent_hosts_wait(
        world: World) -> None:
    hosts = {n: world.add_host(f"h{n}", fault_domain=f"fd-{n}") for n in (1, 2, 3)}
    world.service.create(spec(3))
    on = {i.host: i.instance_id for i in world.store.list_instances("web")}
    assert sorted(on) == ["h1", "h2", "h3"]
    sick, silent = on["h2"], on["h3"]
    world.prober.unhealthy.update({f"web-{sick}", f"web-{silent}"})
    controller_pass(world)
    hosts[3].set_unavailable()  # its instance is Unknown, and nothing touches it
    world.clock.advance(GRACE + 1)
    controller_pass(world)
    [op] = repair_ops(world)
    assert op.detail["instances"] == [sick], op.detail
    placed = {i.instance_id: i.host for i in world.store.list_instances("web")}
    assert sick not in placed and silent in placed
    new = max(placed)
    assert placed[new] == "h2"  # the old instance's fault domain had room


def test_a_failed_repair_keeps_the_console_lines_in_the_journal(world: World) -> None:
    world.service.create(spec(1, action="Restart"))
    sicken(world, 0)
    world.clock.advance(GRACE + 1)
    controller_pass(world)
    [op] = repair_ops(world)
    assert op.status == "failed"
    tail = op.detail["consoleTails"]["web-0"]
    assert tail and any("Linux" in line or "init" in line for line in tail), tail
