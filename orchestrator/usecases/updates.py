"""Model changes and how they reach instances: ``vmss update``, ``vmss apply -f``,
``update-instances``, Automatic upgrades and ``reimage``.

Owned here: how a change of flags or a declarative document becomes a new spec
(``update``, ``apply``), what is refused before the new spec is recorded (network changes,
capacity changes outside scale, a surge the host has no room for), recording it (a model
change makes a new generation), and rolling it out as ``policy.rollout_of`` says — in the
same session: one lock, one journal entry, one resume check, images verified once.

Called by: api.routes, cli.vmss, dryrun.plan, usecases.controller
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.engine import policy
from orchestrator.errors import InvalidInput
from orchestrator.model import ScaleSetSpec, validate
from orchestrator.usecases import rolling, rollout, sets, views, watch
from orchestrator.usecases.recovery import command
from orchestrator.usecases.session import Env, Session


async def apply(env: Env, spec: ScaleSetSpec, *, wait: bool = True) -> views.SetView:
    """Create the set if absent; else bring capacity, model and policy to the spec's."""
    if env.store.find_set(spec.name) is None:
        return await sets.create(env, spec, wait=wait)
    current = env.spec_of(spec.name)
    if spec.capacity != current.capacity:
        await sets.scale(env, spec.name, spec.capacity, wait=wait)
    if (current.model, current.upgrade_policy, current.scale_in_policy,
            current.automatic_repairs_policy) != (spec.model, spec.upgrade_policy,
                                                  spec.scale_in_policy,
                                                  spec.automatic_repairs_policy):
        return await apply_spec(env, spec, wait=wait)
    return views.show_set(env, spec.name)


def changed_spec(current: ScaleSetSpec, changes: dict[str, Any]) -> ScaleSetSpec:
    """The spec ``changes`` (model, rollingUpgradePolicy, mode, scaleInPolicy,
    automaticRepairsPolicy: the flags of ``vmss update``) make of ``current``; InvalidInput
    if it is not valid."""
    data = current.to_json_dict()
    repairs = {**data["automaticRepairsPolicy"], **changes.get("automaticRepairsPolicy", {})}
    model = {**data["model"], **changes.get("model", {})}
    rolling_policy = {**data["upgradePolicy"]["rollingUpgradePolicy"],
                      **changes.get("rollingUpgradePolicy", {})}
    os_upgrades = {**data["upgradePolicy"]["automaticOSUpgradePolicy"],
                   **changes.get("automaticOSUpgradePolicy", {})}
    upgrade_policy = {"mode": changes.get("mode", data["upgradePolicy"]["mode"]),
                      "rollingUpgradePolicy": rolling_policy,
                      "automaticOSUpgradePolicy": os_upgrades}
    return validate(ScaleSetSpec, {**data, "model": model, "upgradePolicy": upgrade_policy,
                                   "automaticRepairsPolicy": repairs,
                                   **({"scaleInPolicy": changes["scaleInPolicy"]}
                                      if "scaleInPolicy" in changes else {})})


async def update(env: Env, set_name: str, changes: dict[str, Any], *, wait: bool = True,
                 allow_surge_fallback: bool = False) -> views.SetView:
    """Change the model and/or the policy; a model change makes a new generation and is
    rolled out as the upgrade policy says (Manual: not at all)."""
    new = changed_spec(env.spec_of(set_name), changes)
    return await apply_spec(env, new, wait=wait, allow_surge_fallback=allow_surge_fallback)


async def apply_spec(env: Env, new: ScaleSetSpec, *, wait: bool = True,
                     allow_surge_fallback: bool = False) -> views.SetView:
    current = env.spec_of(new.name)
    if new.model.network != current.model.network:
        raise InvalidInput("changing the network of an existing scale set is not supported")
    model_changed = new.model != current.model
    if model_changed:
        env.registry.verify(new.model.image).check_memory(new.model.memory_mib)
    for warning in new.upgrade_policy.rolling_upgrade_policy.warnings():
        env.progress(f"warning: {warning}")
    async with command(env, new.name, "update") as session:
        if new.capacity != current.capacity:
            raise InvalidInput("change the capacity with `orch vmss scale` (or apply)")
        rollout_kind = policy.rollout_of(new.upgrade_policy.mode)
        surge = new.upgrade_policy.rolling_upgrade_policy.max_surge
        if model_changed and rollout_kind == "rolling" and surge and not allow_surge_fallback:
            # refused before the model is recorded: bad input changes nothing
            shortage = await rolling.surge_shortage(session, new)
            if shortage:
                raise InvalidInput(rolling.surge_refusal(shortage))
        rec = session.store.update_spec(new.name, new.to_json_dict(),
                                        new_generation=model_changed, now=env.engine.now())
        session.changed_spec()
        if model_changed:
            session.progress(f"{new.name}: model generation {rec.generation}")
            session.store.add_event(new.name, f"model generation {rec.generation}",
                                    now=env.engine.now())
        if model_changed and wait:
            if rollout_kind == "all-at-once":
                await upgrade_all_in(session)
            elif rollout_kind == "rolling":
                rolling.raise_if_faulted(
                    await rolling.start_in(session, allow_surge_fallback=allow_surge_fallback),
                    prefix=f"rolling upgrade of {new.name}", console=env.console_tails)
    return views.show_set(env, new.name)


async def update_instances(env: Env, set_name: str,
                           ids: Sequence[int] | None) -> list[views.InstanceView]:
    """`update-instances`: the latest model to the instances named (all: ``ids`` None)."""
    wanted = None if ids is None else list(ids)
    env.instances(set_name, wanted)  # bad input is refused before the lock
    async with command(env, set_name, "update-instances") as session:
        instances = session.instances(wanted)
        refusal = policy.refuse_protected(instances, "update-instances")
        if refusal and ids is not None:
            raise InvalidInput(refusal)
        todo = policy.eligible(instances, session.record.generation)
        outcomes = await rollout.bring(session, [i for i in instances if i.instance_id in todo],
                                       rollout.ToLatest())
    rollout.raise_failed("update-instances", set_name, outcomes, console=env.console_tails)
    return await views.instance_views(env, set_name, [i.instance_id for i in instances])


async def upgrade_all(env: Env, set_name: str) -> None:
    """Automatic mode: every instance at once, no ordering or availability guarantee."""
    async with command(env, set_name, "automatic-upgrade") as session:
        await upgrade_all_in(session)


async def upgrade_all_in(session: Session) -> None:
    instances = session.store.list_instances(session.set_name)
    todo = policy.eligible(instances, session.record.generation)
    session.progress(f"{session.set_name}: Automatic upgrade of {len(todo)} instances at once")
    outcomes = await rollout.bring(session, [i for i in instances if i.instance_id in todo],
                                   rollout.ToLatest())
    rollout.raise_failed("automatic upgrade", session.set_name, outcomes,
                         console=session.env.console_tails)


async def reimage(env: Env, set_name: str, ids: Sequence[int] | None, *,
                  all_disks: bool = False, wait: bool = True) -> list[views.InstanceView]:
    wanted = None if ids is None else list(ids)
    env.instances(set_name, wanted)  # bad input is refused before the lock
    async with command(env, set_name, "reimage") as session:
        instances = session.instances(wanted)
        refusal = policy.refuse_protected(instances, "reimage")
        if refusal:
            raise InvalidInput(refusal)
        outcomes = await rollout.bring(session, instances, rollout.Reimage(all_disks), wait=wait)
    if wait:
        watch.raise_unhealthy("reimage", {f"{set_name}-{o.instance_id}": o.health
                                          for o in outcomes if o.health is not None},
                              console=env.console_tails)
    rollout.raise_failed("reimage", set_name, outcomes, console=env.console_tails)
    return await views.instance_views(env, set_name, [i.instance_id for i in instances])
