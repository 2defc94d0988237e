"""Crash injection: every operation is killed at every point where it changes the hypervisor
and, separately, before every store write (each a journal point),
then `orch controller run --once` resumes, and the invariants of docs/semantics.md#crash-safety
are checked.

A kill is modelled as a SIGKILL would be: at the chosen point a ``Killed``
(BaseException, so no ``except OrchError`` swallows it) is raised, and from then on every
hypervisor call and every store write of the dead "process" raises ``Killed`` too, so no
clean-up code of the dead process has any effect. Its set lock is released (as the kernel
releases a dead process's flock). A fresh controller on the same store and hypervisor then
runs a reconcile pass.

The points are generated, not hand-picked: each operation is first run to completion while
its mutating hypervisor calls (or its store writes) are counted, then killed before each
of them in turn. After the resume, no journal step may be left open, and each interrupted
operation names the step it died in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.hypervisor.base import MUTATING_VERBS, PowerState
from orchestrator.model import ScaleSetSpec, validate
from tests.world import Reconciler, Upgrades, World, make_world

SET = "web"
DEAD_PID = 2**22 + 7  # above pid_max's default: no such process


class Killed(BaseException):
    """The process died here (SIGKILL): nothing after this point of it takes effect."""


@dataclass
class Killer:
    """Counts the kill points of a world (its mutating hypervisor calls, or its store
    writes: each a journal point); raises Killed before point ``at`` and keeps the dead
    process from touching the hypervisor or the store afterwards."""

    world: World
    at: int | None = None
    points: str = "hypervisor"  # or "store"
    count: int = 0
    dead: bool = False

    def _point(self, kind: str, what: str) -> None:
        if self.dead:
            raise Killed(f"{what} after death")
        if kind != self.points:
            return
        if self.at is not None and self.count == self.at:
            self.dead = True
            raise Killed(f"killed before {what} {self.at}")
        self.count += 1

    def install(self) -> None:
        hv = self.world.hv
        for verb in MUTATING_VERBS:
            setattr(hv, verb, self._wrap(getattr(hv, verb)))
        store = self.world.store
        real_transaction = store.transaction

        @contextlib.contextmanager
        def transaction() -> Iterator[None]:
            self._point("store", "store write")
            with real_transaction():
                yield

        store.transaction = transaction  # type: ignore[method-assign]
        self._restore = (hv, store, real_transaction)

    def _wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self._point("hypervisor", "mutating call")
            return fn(*args, **kwargs)
        return wrapped

    def revive(self) -> None:
        """The dead process is gone: a new one uses the same hypervisor and store."""
        hv, store, real_transaction = self._restore
        for verb in MUTATING_VERBS:
            setattr(hv, verb, getattr(type(hv), verb).__get__(hv))
        store.transaction = real_transaction  # type: ignore[method-assign]
        # the dead process's pid is gone too (here it is the test's own, still alive)
        store._db.execute("UPDATE operations SET pid=? WHERE status='running'", (DEAD_PID,))
        latest = store.latest_rolling_upgrade(SET)
        if latest is not None and latest.status == "RollingForward":
            store.update_rolling_upgrade(latest, detail={**latest.detail, "pid": DEAD_PID})


def spec(mode: str, capacity: int, **rolling: Any) -> ScaleSetSpec:
    return validate(ScaleSetSpec, {
        "name": SET, "capacity": capacity,
        "model": {"image": "tiny:1", "dataDisks": [{"lun": 0, "sizeGiB": 1}]},
        "upgradePolicy": {"mode": mode, "rollingUpgradePolicy": {
            "maxBatchInstancePercent": 50, "maxUnhealthyInstancePercent": 50, **rolling}}})


# Each scenario: (set-up before the kill, the operation that is killed).
Setup = Callable[[World, Upgrades], None]
Operation = Callable[[World, Upgrades], Any]


def _create(mode: str = "Rolling", capacity: int = 2, **rolling: Any) -> Setup:
    def setup(w: World, up: Upgrades) -> None:
        w.service.create(spec(mode, capacity, **rolling))
    return setup


def _nothing(w: World, up: Upgrades) -> None:
    pass


SCENARIOS: dict[str, tuple[Setup, Operation]] = {
    "create": (_nothing, lambda w, up: w.service.create(spec("Rolling", 3))),
    "scale-out": (_create(), lambda w, up: w.service.scale(SET, 4)),
    "scale-in": (_create(capacity=3), lambda w, up: w.service.scale(SET, 1)),
    "delete-set": (_create(), lambda w, up: w.service.delete(SET)),
    "rolling-in-place": (_create(capacity=3),
                         lambda w, up: up.update(SET, {"model": {"image": "tiny:2"}})),
    "rolling-surge": (_create(maxSurge=True),
                      lambda w, up: up.update(SET, {"model": {"image": "tiny:2"}})),
    "automatic": (_create("Automatic"),
                  lambda w, up: up.update(SET, {"model": {"image": "tiny:2"}})),
    "reimage": (_create("Manual"), lambda w, up: up.reimage(SET, None)),
    "restart": (_create("Manual"), lambda w, up: w.service.power(SET, [0, 1], "restart")),
}


def _world(tmp: Path) -> tuple[World, Upgrades]:
    w = make_world(tmp)
    w.register_image("tiny", "2")
    return w, Upgrades(w.service)


def count_points(tmp: Path, name: str, points: str) -> int:
    setup, operation = SCENARIOS[name]
    w, up = _world(tmp)
    setup(w, up)
    killer = Killer(w, points=points)
    killer.install()
    operation(w, up)
    return killer.count


def check_invariants(w: World, name: str) -> None:
    """After resume: exactly the store's instances exist in libvirt, at capacity, running
    and Healthy, on the latest model where the policy rolls it out."""
    store = w.store
    rec = store.find_set(SET)
    domains, volumes, reservations = w.resources()
    if rec is None:  # the set was being deleted (or never created): nothing may remain
        assert (domains, volumes, reservations) == (set(), set(), set()), name
        return
    instances = store.list_instances(SET)
    spec_now = w.service.spec_of(rec)
    names = {i.name for i in instances}
    assert len(instances) == spec_now.capacity, (name, [i.name for i in instances])
    assert {d for d in domains if d.startswith(f"{SET}-")} == names, (name, domains, names)
    assert reservations == names, (name, reservations)
    expected = {v for i in instances
                for v in (i.os_volume, f"{i.name}-seed.iso", f"{i.name}-data0.qcow2",
                          f"{i.name}-console.log")}  # every instance has booted by now
    assert volumes == expected, (name, sorted(volumes ^ expected))
    for i in instances:
        assert i.status == "active", (name, i.name, i.status)
        assert w.hv.domain_state(i.name) is PowerState.RUNNING, (name, i.name)
        owner = w.hv.domain_owner(i.name)
        assert owner is not None and owner.generation == i.model_generation, (name, i.name, owner)
        disk = w.hv.domains[i.name].disks[0]
        assert disk.path.endswith(i.os_volume), (name, i.name, disk.path, i.os_volume)
    if spec_now.upgrade_policy.mode in ("Rolling", "Automatic"):
        assert {i.model_generation for i in instances} == {rec.generation}, name
    states = {i["instanceId"]: i["healthState"] for i in w.service.list_instances(SET)}
    assert set(states.values()) == {"Healthy"}, (name, states)


@pytest.mark.parametrize("points", ["hypervisor", "store"])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_killed_at_every_point_then_resumed(tmp_path: Path, name: str, points: str) -> None:
    count = count_points(tmp_path / "count", name, points)
    assert count > 0
    for at in range(count):
        w, up = _world(tmp_path / f"kill-{at}")
        setup, operation = SCENARIOS[name]
        setup(w, up)
        killer = Killer(w, at=at, points=points)
        killer.install()
        with pytest.raises(Killed):
            operation(w, up)
        killer.revive()
        open_steps = {st.operation_id: st for op in w.store.list_operations(SET)
                      for st in w.store.list_steps(op.id) if st.status == "started"}
        report = Reconciler(up).run_pass()
        assert report.problems == [], (name, at, report.problems)
        ops = {op.id: op for op in w.store.list_operations(SET)}
        journal = [op.status for op in ops.values()]
        if points == "hypervisor" or any(s == "interrupted" for s in journal):
            assert "running" not in journal and "interrupted" in journal, (name, at, journal)
        assert "running" not in journal, (name, at, journal)
        # the journal says where each dead operation stopped, and leaves no step open
        for op_id, st in open_steps.items():
            assert f"during {st.step} of {st.instance}" in ops[op_id].detail["error"], (
                name, at, ops[op_id].detail)
        assert not [st for op_id in ops for st in w.store.list_steps(op_id)
                    if st.status == "started"], (name, at)
        check_invariants(w, f"{name} killed before {points} point {at}")
        # a second pass finds nothing to do
        again = Reconciler(up).run_pass()
        assert again.actions == [] and again.problems == [], (name, at, again.actions)
