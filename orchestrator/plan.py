"""`orch vmss plan`: what an update (or `rolling-upgrade start`) would do to a scale set,
batch by batch, with a predicted duration, changing nothing.

Owned here: ``make_plan`` and the plan document it returns (keys ``name``, ``mode``,
``maxSurge``, ``fromGeneration``, ``toGeneration``, ``batches``, ``predictedSeconds``,
``outcome`` = Completed | Faulted | NothingToDo | Manual, ``error``, ``thresholds``,
``assumptions``, ``instances``, ``notes``). Called by ``cli.vmss`` (``vmss plan``) only.

Simulated, not re-derived: the real ``Upgrades`` code runs in a ``simworld.SimWorld`` (a copy
of the store, a fake hypervisor mirroring the set, a fake clock), so Automatic, Rolling in
place, MaxSurge, Manual, the thresholds and the surge capacity check behave exactly as in a
real update; the batches and status are read back from the simulated rolling upgrade, the
duration from the fake clock. The update's own checks run first on a bare copy, before
libvirt is asked anything, so bad input fails as `update` fails (exit 2, same message).
Not simulated: work a killed command left, which a real update finishes first.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from orchestrator.errors import Conflict, EnvironmentProblem, Gone, InvalidInput, OrchError
from orchestrator.hypervisor.base import PowerState
from orchestrator.service import Service
from orchestrator.simworld import SimWorld, Timings, build_world, measure_timings, observe
from orchestrator.store import InstanceRecord, RollingUpgradeRecord

OUTCOMES = ("Completed", "Faulted", "NothingToDo", "Manual")


def make_plan(service: Service, set_name: str, *, changes: dict[str, Any] | None,
              allow_surge_fallback: bool = False) -> dict[str, Any]:
    """The plan of ``Upgrades.update(set_name, changes)`` or, with ``changes`` None, of what
    ``rolling-upgrade start`` would do now (Automatic sets: the upgrade of every instance
    at once that the controller makes; Manual sets: nothing). ``service`` is the real one:
    its store is only read, its hypervisor only asked read-only questions. Errors the real
    update would raise before acting (bad input, a surge the host has no room for, a
    rolling upgrade already running) are raised; a predicted failure is the plan's outcome."""
    store = service.store
    rec = store.get_set(set_name)
    spec = service.spec_of(rec)
    timings = measure_timings(store.list_instances(set_name),
                              grace_seconds=spec.model.health_probe.grace_period_seconds)
    said: set[str] = set()

    def warn(line: str) -> None:  # the update's warnings reach the user, once each
        if line.startswith("warning:") and line not in said:
            said.add(line)
            service.progress(line)

    now = service.clock.now().timestamp()
    with tempfile.TemporaryDirectory(prefix="orch-plan-") as tmp:
        if changes is not None:
            check = build_world(store, Path(tmp) / "check", set_name=set_name,
                                settings=service.engine.settings, now=now, timings=timings,
                                observed=None, progress=warn)
            try:
                check.upgrades.update(set_name, changes, wait=False)
            finally:
                check.close()
        observed = observe(service.hv, pool=service.engine.settings.pool,
                           network=spec.model.network)
        world = build_world(store, Path(tmp) / "sim", set_name=set_name,
                            settings=service.engine.settings, now=now, timings=timings,
                            observed=observed, progress=warn)
        try:
            return _simulate(world, set_name, changes=changes, timings=timings,
                             allow_surge_fallback=allow_surge_fallback)
        finally:
            world.close()


def _simulate(world: SimWorld, set_name: str, *, changes: dict[str, Any] | None,
              timings: Timings, allow_surge_fallback: bool) -> dict[str, Any]:
    upgrades = world.upgrades
    store = world.store
    first = store.get_set(set_name)
    before = store.list_instances(set_name)
    latest_before = store.latest_rolling_upgrade(set_name)
    mode = upgrades.service.spec_of(first).upgrade_policy.mode
    assumptions = {**timings.as_dict(), **_health_assumptions(world, before)}
    started = world.clock.monotonic()
    failure: str | None = None
    try:
        if changes is not None:
            upgrades.update(set_name, changes, wait=True,
                            allow_surge_fallback=allow_surge_fallback)
        elif mode == "Rolling":
            upgrades.start_rolling(set_name, allow_surge_fallback=allow_surge_fallback)
        elif mode == "Automatic":
            upgrades.upgrade_all(set_name)
    except (InvalidInput, Conflict, EnvironmentProblem, Gone):
        raise  # refused before acting, as the real update would be
    except OrchError as exc:
        failure = exc.one_line()
    elapsed = world.clock.monotonic() - started

    last = store.get_set(set_name)
    spec = upgrades.service.spec_of(last)
    mode = spec.upgrade_policy.mode
    target = last.generation
    latest = store.latest_rolling_upgrade(set_name)
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
    todo = [i for i in before
            if i.model_generation != target and not i.protect_from_scale_set_actions]
    model_changed = target != first.generation
    if mode == "Manual":
        plan["outcome"] = "Manual"
        plan["notes"].append(_manual_note(set_name, todo, target))
    elif rolled is not None:
        _read_rolling(plan, rolled, store.batch_times.get(rolled.id, []),
                      started=started, ended=started + elapsed)
    elif mode == "Automatic" and (changes is None or model_changed) and todo:
        ids = [i.instance_id for i in todo]
        after = {i.instance_id: i for i in store.list_instances(set_name)}
        bad = [i for i in ids if after.get(i) is None
               or after[i].health.get("state") != "Healthy"]
        plan["batches"] = [{"batch": 1, "instances": ids, "action": "in place",
                            "startSeconds": 0.0, "endSeconds": round(elapsed, 1),
                            "newInstances": [], "failed": bad}]
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
               if world.hv.domain_state(i.name) is not PowerState.RUNNING]
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


def _read_rolling(plan: dict[str, Any], rolled: RollingUpgradeRecord,
                  times: list[list[float]], *, started: float, ended: float) -> None:
    surge = bool(rolled.detail.get("surge"))
    batches = []
    for k, batch in enumerate(rolled.detail.get("batches", [])):
        window = times[k] if k < len(times) else [started, ended]
        end = window[1] if len(window) > 1 else ended
        batches.append({
            "batch": batch["batch"], "instances": list(batch["instances"]),
            "action": "surge" if surge else "in place",
            "startSeconds": round(window[0] - started, 1), "endSeconds": round(end - started, 1),
            "newInstances": list(batch["succeeded"]) if surge else [],
            "failed": list(batch["failed"]),
        })
    plan["batches"] = batches
    plan["maxSurge"] = surge
    plan["thresholds"] = list(rolled.detail.get("thresholds", []))
    plan["error"] = rolled.error
    if rolled.status == "Faulted":
        plan["outcome"] = "Faulted"
    elif rolled.status == "Completed":
        plan["outcome"] = "Completed" if batches else "NothingToDo"
    if rolled.detail.get("surgeFallback"):
        plan["notes"].append(str(rolled.detail["surgeFallback"]))
    if rolled.detail.get("rollback"):
        plan["notes"].append(str(rolled.detail["rollback"]))


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
