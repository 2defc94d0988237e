"""Property tests of rolling upgrades (docs/semantics.md#rolling and #availability) on the
fake hypervisor and fake clock: random capacities, policies and failure patterns; after every
hypervisor call the watcher checks the availability floor (in place) or the surge ceiling; at
the end the batches and the status must be what an independent model of the rules predicts,
and nothing may leak.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.property.harness import (
    NEW,
    OLD,
    SET,
    Run,
    Scenario,
    batch_limit,
    leaks,
    predict,
    prepare,
)

SETTINGS = settings(max_examples=12, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _subset(draw: st.DrawFn, pool: list[int], *, max_size: int | None = None) -> frozenset[int]:
    if not pool:
        return frozenset()
    return draw(st.frozensets(st.sampled_from(pool), max_size=max_size))


@st.composite
def scenarios(draw: st.DrawFn, *, surge: bool | None = None, broken: bool | None = None,
              rollback: bool | None = None) -> Scenario:
    capacity = draw(st.integers(1, 12))
    ids = list(range(capacity))
    surge = draw(st.booleans()) if surge is None else surge
    broken = draw(st.booleans()) if broken is None else broken
    protected = _subset(draw, ids, max_size=2)
    pre_upgraded = _subset(draw, [i for i in ids if i not in protected], max_size=2)
    rest = [i for i in ids if i not in pre_upgraded]
    upgraded_percent = draw(st.integers(0, 100))
    return Scenario(
        capacity=capacity,
        batch_percent=draw(st.integers(5, 100)),
        unhealthy_percent=draw(st.integers(0, 100)),
        upgraded_percent=upgraded_percent,
        prioritize=draw(st.booleans()),
        rollback=draw(st.booleans()) if rollback is None else rollback,
        surge=surge,
        pause=draw(st.integers(0, 30)),
        pre_unhealthy=_subset(draw, rest),
        fail_new=frozenset() if surge else _subset(draw, rest),
        broken=broken,
        acpi_deaf=_subset(draw, ids, max_size=3),
        protected=protected,
        pre_upgraded=pre_upgraded,
    )


def _roll(tmp: Path, s: Scenario, *,
          check_surge_health: bool = False) -> tuple[Run, dict[str, Any]]:
    run = prepare(tmp, s, check_surge_health=check_surge_health)
    run.watcher.armed = True
    status = run.upgrades.start_rolling(SET)
    run.watcher.armed = False
    assert run.watcher.checks > 0
    return run, status


def _redefined(run: Run) -> set[int]:
    """Instances whose domain was (re)defined since the upgrade started."""
    return {int(n.removeprefix(f"{SET}-")) for verb, n in run.world.hv.calls[run.calls_before:]
            if verb == "define_domain"}


def check_batches(s: Scenario, status: dict[str, Any]) -> None:
    limit = batch_limit(s.capacity, s.batch_percent)
    for b in status["batches"]:
        assert 1 <= len(b["instances"]) <= limit, f"batch {b} larger than {limit}"
        assert not set(b["instances"]) & (s.pre_upgraded | s.protected), (
            f"batch {b} holds instances already on the latest model or protected")


def check_prediction(s: Scenario, run: Run, status: dict[str, Any]) -> None:
    expected = predict(s)
    assert expected.code != "Loop"
    got = [b["instances"] for b in status["batches"]]
    assert (status["runningStatus"]["code"], got) == (expected.code, expected.batches), (
        f"{status['runningStatus']['code']} {status['error']} after batches {got}")
    assert [sorted(b["failed"]) for b in status["batches"]] == [sorted(f) for f in expected.failed]
    instances = run.world.store.list_instances(SET)
    assert {i.instance_id: i.model_generation for i in instances} == expected.generation
    states = {i.instance_id: i.health.get("state") == "Healthy" for i in instances}
    assert states == expected.healthy


def check_end_state(s: Scenario, run: Run, status: dict[str, Any]) -> None:
    world = run.world
    assert leaks(world) == []
    code = status["runningStatus"]["code"]
    instances = world.store.list_instances(SET)
    redefined = _redefined(run)
    assert not redefined & (s.protected | s.pre_upgraded)
    if code == "Completed":
        # every instance is on the new model, except the old ones whose surge replacement
        # failed within the thresholds: those are counted as failed and tried no more
        failed = {i for b in status["batches"] for i in b["failed"]}
        for i in instances:
            if not i.protect_from_scale_set_actions and i.instance_id not in failed:
                assert (i.model_generation, i.image) == (2, NEW), i
        assert status["progress"]["failedInstanceCount"] == len(failed)
        if not s.broken and not s.fail_new:
            assert all(i.health.get("state") == "Healthy" for i in instances
                       if not i.protect_from_scale_set_actions)
    if code == "Faulted" and s.broken and s.upgraded_percent < 100 and not s.surge:
        first = set(status["batches"][0]["instances"]) if status["batches"] else set()
        assert len(status["batches"]) <= 1
        untouched = [i for i in instances if i.instance_id not in first]
        assert not redefined - first, f"outside the first batch {sorted(first)}: {redefined}"
        for i in untouched:
            if i.instance_id not in s.pre_upgraded:
                assert (i.model_generation, i.image, i.os_volume) == (
                    1, OLD, run.os_before[i.instance_id])
    if code == "Faulted" and s.rollback and not s.surge:
        failed = {i for b in status["batches"] for i in b["failed"]}
        by_id = {i.instance_id: i for i in instances}
        volumes = {v.name for v in world.hv.list_volumes("default")}
        for iid in failed:
            inst = by_id[iid]
            assert (inst.model_generation, inst.image) == (1, OLD), inst
            assert inst.os_volume == run.os_before[iid] and not inst.prev_os_volume
            assert [v for v in volumes if v.startswith(f"{inst.name}-os")] == [inst.os_volume]
            if iid not in s.pre_unhealthy:
                assert inst.health.get("state") == "Healthy"


def check_restart_skips(run: Run, status: dict[str, Any]) -> None:
    """Starting again after Completed changes nothing when every instance runs the latest
    model (an old instance left by a tolerated surge failure is rightly tried again)."""
    if status["runningStatus"]["code"] != "Completed" or status["progress"]["failedInstanceCount"]:
        return
    mark = len(run.world.hv.calls)
    again = run.upgrades.start_rolling(SET)
    acted = [c for c in run.world.hv.calls[mark:] if c[0] in ("define_domain", "start",
                                                                "shutdown", "destroy")]
    assert acted == []
    assert again["runningStatus"]["code"] == "Completed" and again["batches"] == []


@SETTINGS
@given(scenarios(surge=False))
def test_in_place_rolling_upgrade(tmp_path_factory: pytest.TempPathFactory, s: Scenario) -> None:
    run, status = _roll(tmp_path_factory.mktemp("ex"), s)
    check_batches(s, status)
    check_prediction(s, run, status)
    check_end_state(s, run, status)
    check_restart_skips(run, status)


@SETTINGS
@given(scenarios(surge=True))
def test_surge_rolling_upgrade(tmp_path_factory: pytest.TempPathFactory, s: Scenario) -> None:
    all_good = not s.broken and not s.pre_unhealthy
    run, status = _roll(tmp_path_factory.mktemp("ex"), s, check_surge_health=all_good)
    assert run.watcher.max_domains <= s.capacity + s.batch
    if all_good:
        assert run.watcher.min_healthy is not None and run.watcher.min_healthy >= s.capacity
    check_batches(s, status)
    check_prediction(s, run, status)
    check_end_state(s, run, status)
    check_restart_skips(run, status)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(surge=False, broken=True).filter(lambda s: s.upgraded_percent < 100))
def test_broken_image_faults_after_the_first_batch(tmp_path_factory: pytest.TempPathFactory,
                                                   s: Scenario) -> None:
    run, status = _roll(tmp_path_factory.mktemp("ex"), s)
    check_prediction(s, run, status)
    check_end_state(s, run, status)
    if set(range(s.capacity)) - s.protected - s.pre_upgraded:
        assert status["runningStatus"]["code"] == "Faulted"


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(surge=False, broken=False, rollback=True).filter(lambda s: bool(s.fail_new)))
def test_rollback_returns_failed_instances(tmp_path_factory: pytest.TempPathFactory,
                                           s: Scenario) -> None:
    run, status = _roll(tmp_path_factory.mktemp("ex"), s)
    check_prediction(s, run, status)
    check_end_state(s, run, status)


@st.composite
def flaps(draw: st.DrawFn) -> tuple[Scenario, list[tuple[int, int, bool]]]:
    s = draw(scenarios(surge=False))
    events = draw(st.lists(st.tuples(st.integers(0, 400), st.integers(0, s.capacity - 1),
                                     st.booleans()), max_size=6))
    return s, sorted(events)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flaps())
def test_health_flaps_keep_the_floor(tmp_path_factory: pytest.TempPathFactory,
                                     case: tuple[Scenario, list[tuple[int, int, bool]]]) -> None:
    """Instances turn unhealthy (and back) at random moments: the floor, the batch size and
    the bookkeeping hold whatever the outcome."""
    s, events = case
    run = prepare(tmp_path_factory.mktemp("ex"), s)
    count = 0

    def flap(verb: str, name: str) -> None:
        nonlocal count
        if not run.watcher.armed:
            return
        for at, iid, bad in events:
            if at == count:
                target = f"{SET}-{iid}"
                (run.world.prober.unhealthy.add if bad else run.world.prober.unhealthy.discard)(
                    target)
        count += 1

    run.watcher.hooks.append(flap)
    run.watcher.armed = True
    status = run.upgrades.start_rolling(SET)
    run.watcher.armed = False
    check_batches(s, status)
    assert leaks(run.world) == []
    assert status["runningStatus"]["code"] in ("Completed", "Faulted")
    if status["runningStatus"]["code"] == "Completed":
        assert all(i.model_generation == 2 for i in run.world.store.list_instances(SET)
                   if not i.protect_from_scale_set_actions)
    check_restart_skips(run, status)
