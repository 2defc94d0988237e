"""`orch vmss plan`: what an update (or `rolling-upgrade start`) would do to a scale set,
batch by batch, with a predicted duration, changing nothing.

Owned here: ``make_plan`` and the plan document it returns (keys ``name``, ``mode``,
``maxSurge``, ``fromGeneration``, ``toGeneration``, ``batches``, ``predictedSeconds``,
``outcome`` = Completed | Faulted | NothingToDo | Manual, ``error``, ``thresholds``,
``assumptions``, ``instances``, ``notes``).

Simulated, not re-derived: the real use cases (``usecases.updates``, ``usecases.rolling``) run
in a ``simworld.SimWorld`` (a copy of the store, a fake hypervisor mirroring the set, a fake
clock), so Automatic, Rolling in place, MaxSurge, Manual, the thresholds and the surge
capacity check behave exactly as in a real update; the batches, their times and the status
are read back from the simulated rolling upgrade's record, the duration from the fake clock. The update's own checks run first on a bare copy, before
libvirt is asked anything, so bad input fails as `update` fails (exit 2, same message).
Not simulated: work a killed command left, which a real update finishes first.

Called by: cli.vmss
"""

from __future__ import annotations

import contextlib
import gc
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestrator.dryrun.simworld import (
    SimWorld,
    Timings,
    build_world,
    measure_timings,
    observe_hosts,
)
from orchestrator.engine import policy
from orchestrator.engine.upgrade_state import RollingStatus, RollingUpgrade
from orchestrator.errors import Conflict, EnvironmentProblem, InvalidInput, OrchError
from orchestrator.hypervisor.base import PowerState
from orchestrator.store import InstanceRecord
from orchestrator.usecases import rolling, updates
from orchestrator.usecases.session import Env

OUTCOMES = ("Completed", "Faulted", "NothingToDo", "Manual")


async def make_plan(env: Env, set_name: str, *, changes: dict[str, Any] | None,
                    allow_surge_fallback: bool = False) -> dict[str, Any]:
    """The plan of ``updates.update(set_name, changes)`` or, with ``changes`` None, of what
    ``rolling-upgrade start`` would do now (Automatic sets: the upgrade of every instance
    at once that the controller makes; Manual sets: nothing). ``env`` is the real one:
    its store is only read, its hypervisor only asked read-only questions. Errors the real
    update would raise before acting (bad input, a surge the host has no room for, a
    rolling upgrade already running) are raised; a predicted failure is the plan's outcome."""
    store = env.store
    spec = env.spec_of(set_name)
    timings = measure_timings(store.list_instances(set_name),
                              grace_seconds=spec.model.health_probe.grace_period_seconds)
    said: set[str] = set()

    def warn(line: str) -> None:  # the update's warnings reach the user, once each
        if line.startswith("warning:") and line not in said:
            said.add(line)
            env.progress(line)

    now = env.clock.now().timestamp()
    settings = env.engine.settings
    with tempfile.TemporaryDirectory(prefix="orch-plan-") as tmp:
        if changes is not None:
            check = build_world(store, Path(tmp) / "check", set_name=set_name,
                                settings=settings, now=now, timings=timings,
                                observed=None, network=spec.model.network, progress=warn)
            try:
                await updates.update(check.env, set_name, changes, wait=False)
            finally:
                check.close()
        observed = await observe_hosts(env, network=spec.model.network)
        world = build_world(store, Path(tmp) / "sim", set_name=set_name,
                            settings=settings, now=now, timings=timings,
                            observed=observed, progress=warn)
        try:
            with _collector_spared():
                return await _simulate(world, set_name, changes=changes, timings=timings,
                                       allow_surge_fallback=allow_surge_fallback)
        finally:
            world.close()


@contextlib.contextmanager
def _collector_spared() -> Iterator[None]:
    """While the upgrade is simulated, the objects that exist before it (the simulated world,
    whatever the caller holds) are left out of the garbage collector's full passes. The
    simulation allocates enough to start several, and each walked every one of them: about
    a quarter of the time of a plan of 1000 instances. Objects made during the simulation
    are collected as ever; nothing is changed if the heap is frozen already."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def _simulate(world: SimWorld, set_name: str, *, changes: dict[str, Any] | None,
                    timings: Timings, allow_surge_fallback: bool) -> dict[str, Any]:
    env = world.env
    store = world.store
    first = store.get_set(set_name)
    before = store.list_instances(set_name)
    latest_before = rolling.latest(env, set_name)
    mode = env.spec_of(set_name).upgrade_policy.mode
    assumptions = {**timings.as_dict(), **_health_assumptions(world, before)}
    started = world.clock.monotonic()
    failure: str | None = None
    try:
        kind = policy.rollout_of(mode)
        if changes is not None:
            await updates.update(env, set_name, changes, wait=True,
                                 allow_surge_fallback=allow_surge_fallback)
        elif kind == "rolling":
            await rolling.start(env, set_name, allow_surge_fallback=allow_surge_fallback)
        elif kind == "all-at-once":
            await updates.upgrade_all(env, set_name)
    except (InvalidInput, Conflict, EnvironmentProblem):
        raise  # refused before acting, as the real update would be
    except OrchError as exc:
        failure = exc.one_line()
    elapsed = world.clock.monotonic() - started

    last = store.get_set(set_name)
    spec = env.spec_of(set_name)
    mode = spec.upgrade_policy.mode
    target = last.generation
    latest = rolling.latest(env, set_name)
    rolled = latest if latest is not None and (
        latest_before is None or latest.id != latest_before.id) else None
    plan: dict[str, Any] = {
        "name": set_name, "mode": mode,
        "maxSurge": spec.upgrade_policy.rolling_upgrade_policy.max_surge,
        "fromGeneration": first.generation, "toGeneration": target,
        "batches": [], "predictedSeconds": round(elapsed, 1), "outcome": "NothingToDo",
        "error": None, "thresholds": [], "assumptions": assumptions,
        "instances": [], "notes": [],
    }
    eligible = set(policy.eligible(before, target))
    todo = [i for i in before if i.instance_id in eligible]
    model_changed = target != first.generation
    if mode == "Manual":
        plan["outcome"] = "Manual"
        plan["notes"].append(_manual_note(set_name, todo, target))
    elif rolled is not None:
        fd_of_host = {h.name: h.fault_domain for h in env.engine.fleet.hosts()} \
            if env.engine.fleet else {}
        fd_of = {i.instance_id: fd_of_host.get(i.host, i.host)
                 for i in [*before, *store.list_instances(set_name)]}
        _read_rolling(plan, rolled, started=started, ended=started + elapsed, fd_of=fd_of)
    elif mode == "Automatic" and (changes is None or model_changed) and todo:
        ids = [i.instance_id for i in todo]
        after = {i.instance_id: i for i in store.list_instances(set_name)}
        bad = [i for i in ids if after.get(i) is None
               or after[i].health.get("state") != "Healthy"]
        plan["batches"] = [{"batch": 1, "instances": ids, "action": "in place",
                            "startSeconds": 0.0, "endSeconds": round(elapsed, 1),
                            "newInstances": [], "failed": bad, "faultDomain": None}]
        plan["outcome"] = "Faulted" if failure else "Completed"
        plan["notes"].append("Automatic: every instance at once, no ordering or "
                             "availability guarantee")
    elif changes is not None and not model_changed:
        plan["notes"].append("the update changes no model: nothing is rolled out")
    if failure and plan["outcome"] != "Faulted":
        plan["outcome"] = "Faulted"
    if plan["outcome"] == "Faulted" and plan["error"] is None:
        plan["error"] = failure
    if plan["outcome"] in ("NothingToDo", "Manual"):
        plan["predictedSeconds"] = 0.0
    if plan["outcome"] == "NothingToDo":
        plan["notes"].extend(_idle_notes(set_name, before, target=target,
                                         policy_only=changes is not None))
    plan["instances"] = _instance_actions(before, plan, target=target)
    return plan


def _health_assumptions(world: SimWorld, before: list[InstanceRecord]) -> dict[str, Any]:
    """What the simulation assumes of the instances' health, as ``simworld`` mirrored it."""
    unhealthy = [i.instance_id for i in before if i.name in world.prober.unhealthy]
    stopped = [i.instance_id for i in before
               if i.host not in world.hosts or world.hosts[i.host].domain_state(i.name)
               is not PowerState.RUNNING]
    lines = []
    if unhealthy:
        lines.append(f"instances {_ids(unhealthy)} are unhealthy now and are assumed to stay "
                     "unhealthy, also once upgraded")
    if stopped:
        lines.append(f"instances {_ids(stopped)} do not run now: they count as unhealthy "
                     "until their upgrade starts them")
    return {"unhealthyInstances": unhealthy, "stoppedInstances": stopped, "health": lines}


def _ids(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


def _idle_notes(set_name: str, before: list[InstanceRecord], *, target: int,
                policy_only: bool) -> list[str]:
    """Why instances not on the latest model stay so in a plan that rolls nothing."""
    behind = [i for i in before if i.model_generation != target]
    kept = [i for i in behind if i.protect_from_scale_set_actions]
    notes = []
    if policy_only and len(behind) > len(kept):
        notes.append(f"{len(behind) - len(kept)} instance(s) not on the latest model "
                     f"(generation {target}) are not rolled by this update; `orch vmss plan "
                     f"--name {set_name}` shows what `rolling-upgrade start` would do")
    if kept:
        notes.append(f"{len(kept)} instance(s) not on the latest model are protected from "
                     "scale set actions and left alone")
    return notes


def _manual_note(set_name: str, todo: list[InstanceRecord], target: int) -> str:
    if not todo:
        return ("Manual: nothing is rolled; every instance that may be acted on runs the "
                f"latest model (generation {target})")
    ids = [i.instance_id for i in todo]
    return (f"Manual: nothing is rolled; instances {_ids(ids)} are not on the latest model "
            f"(generation {target}): `orch vmss update-instances --name {set_name} "
            f"--instance-ids {' '.join(str(i) for i in ids)}` applies it")


def _read_rolling(plan: dict[str, Any], rolled: RollingUpgrade, *, started: float,
                  ended: float, fd_of: dict[int, str]) -> None:
    batches = []
    for batch in rolled.batches:
        begin = batch.started if batch.started is not None else started
        end = batch.ended if batch.ended is not None else ended
        batches.append({
            "batch": batch.number, "instances": list(batch.instances),
            "action": "surge" if rolled.surge else "in place",
            "startSeconds": round(begin - started, 1), "endSeconds": round(end - started, 1),
            "newInstances": list(batch.succeeded) if rolled.surge else [],
            "failed": list(batch.failed),
            "faultDomain": fd_of.get(batch.instances[0]) if batch.instances else None,
        })
    plan["batches"] = batches
    plan["maxSurge"] = rolled.surge
    plan["thresholds"] = list(rolled.thresholds)
    plan["error"] = rolled.error
    if rolled.status is RollingStatus.FAULTED:
        plan["outcome"] = "Faulted"
    elif rolled.status is RollingStatus.COMPLETED:
        plan["outcome"] = "Completed" if batches else "NothingToDo"
    if rolled.surge_fallback:
        plan["notes"].append(rolled.surge_fallback)
    if rolled.rollback_note:
        plan["notes"].append(rolled.rollback_note)


def _instance_actions(before: list[InstanceRecord], plan: dict[str, Any], *,
                      target: int) -> list[dict[str, Any]]:
    """What the plan does to each instance of the set as it is now."""
    acted: dict[int, tuple[int, str]] = {}
    for batch in plan["batches"]:
        failed = set(batch["failed"])
        replacements = iter(batch["newInstances"])
        for old in sorted(batch["instances"]):
            if batch["action"] == "surge":
                what = ("replacement failed (unhealthy, removed); the instance stays"
                        if old in failed else f"replaced by new instance {next(replacements)}")
            else:
                what = ("upgraded in place, unhealthy after" if old in failed
                        else "upgraded in place")
            acted[old] = (batch["batch"], what)
    rows = []
    for inst in before:
        batch_no: int | None = None
        if inst.instance_id in acted:
            batch_no, action = acted[inst.instance_id]
        elif inst.model_generation == target:
            action = "none: runs the latest model"
        elif inst.protect_from_scale_set_actions:
            action = "none: protected from scale set actions"
        elif plan["outcome"] == "Manual":
            action = "none: Manual mode (`update-instances` applies the latest model)"
        elif plan["outcome"] == "Faulted":
            action = "none: not reached, the upgrade stops first (Faulted)"
        else:
            action = "none"
        rows.append({"instanceId": inst.instance_id, "modelGeneration": inst.model_generation,
                     "batch": batch_no, "action": action})
    return rows
