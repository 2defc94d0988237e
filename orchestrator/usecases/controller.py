"""The controller's pass over every set (``orch controller run [--once]``): observe each
set, compare it with what the store says it should be, and act — finish or undo
interrupted work, roll out model changes of Automatic and Rolling sets and new image
versions to sets that follow them (automatic OS upgrades), bring the
instance count to the capacity, start instances that should run, commit models an
interrupted upgrade left uncommitted, repair instances that stay unhealthy.

Owned here: ``run_pass`` and the order of those checks, ``commit_healthy``, and waiting
for instances a killed command booted. Every action goes through the same use cases as
the commands, in one session per set and pass.

Called by: api.routes, api.serve, cli.controller
"""

from __future__ import annotations

from orchestrator import logs
from orchestrator.engine import policy, steps
from orchestrator.engine.health import HealthState
from orchestrator.errors import Conflict, OrchError
from orchestrator.hypervisor.base import PowerState
from orchestrator.usecases import (
    osupgrades,
    placement,
    recovery,
    repairs,
    rolling,
    sets,
    updates,
    watch,
)
from orchestrator.usecases.recovery import PassReport
from orchestrator.usecases.session import Env, Session, open_session

# what a pass's session names itself in the journal and in each set's lock file
PURPOSE = "resume"


async def run_pass(env: Env) -> PassReport:
    report = PassReport()
    store = env.store
    known = store.list_sets()
    # a create killed before its set was recorded: nothing to resume, only the journal
    for gone in sorted({op.set_name for op in store.list_operations()
                        if op.status == "running"} - {rec.name for rec in known}):
        recovery.mark_dead(env, gone, recovery.dead_operations(env, gone), report)
    for rec in known:
        try:
            with logs.scope(rec.name):
                async with open_session(env, rec.name, PURPOSE) as session:
                    await _reconcile_set(session, report)
        except Conflict as exc:
            report.problems.append(f"{rec.name}: skipped: {exc.message}")
        except OrchError as exc:
            report.problems.append(f"{rec.name}: {exc.one_line()}")
    return report


async def _reconcile_set(session: Session, report: PassReport) -> None:
    env, store, name = session.env, session.store, session.set_name
    # 0-1. interrupted operations and half-done instances; libvirt's view wins
    interrupted = await recovery.finish_interrupted(session, report)
    # 2. a rolling upgrade whose driver died goes on (we hold the lock: nobody drives it)
    latest = rolling.latest(env, name)
    if latest is not None and latest.running:
        report.act(env, f"{name}: resuming an interrupted rolling upgrade")
        await rolling.start_in(session)
    # 3. capacity: instances missing after an interrupted create or scale, or made by a
    # scale-out killed before it recorded the new capacity (undone: capacity is the intent)
    spec = session.spec
    count = len(store.list_instances(name))
    if count != spec.capacity:
        what = "creating the rest" if count < spec.capacity else "removing the extra ones"
        report.act(env, f"{name}: {count} instances for a capacity of {spec.capacity}; {what}")
        await sets.scale_to(session, spec, wait=True)
    # 4. a newer version of the image NAME:latest names, with automatic OS upgrades on
    target = await osupgrades.due(session)
    if target is not None:
        await osupgrades.upgrade(session, target, report)
    # 5. model changes not yet rolled out (recorded with --no-wait, or interrupted)
    generation = session.record.generation
    behind = policy.eligible(store.list_instances(name), generation)
    kind = policy.rollout_of(session.spec.upgrade_policy.mode)
    latest = rolling.latest(env, name)
    if behind and kind == "all-at-once" and not osupgrades.failed_generation(session, generation):
        report.act(env, f"{name}: Automatic upgrade of {len(behind)} instances")
        await updates.upgrade_all_in(session)
    elif behind and kind == "rolling" and (latest is None
                                           or latest.target_generation != generation):
        # an upgrade to this generation that ended Faulted or Cancelled waits for the user
        report.act(env, f"{name}: rolling upgrade to generation {generation}")
        await rolling.start_in(session)
    # 6. an instance the user wants running that is not (crashed, killed, or left
    # shutting down by an interrupted command)
    observed = await placement.observe_power(env)
    power = observed.states
    down: dict[PowerState, list[int]] = {
        PowerState.STOPPED: [], PowerState.CRASHED: [], PowerState.SHUTTING_DOWN: []}
    for inst in store.list_instances(name):
        if inst.host in observed.unreachable:
            continue  # nothing touches it until its host is back
        state = power.get(inst.name, PowerState.MISSING)
        if inst.power_intent == "running" and state in down:
            down[state].append(inst.instance_id)
    stopped = down[PowerState.STOPPED] + down[PowerState.CRASHED]
    if stopped:
        report.act(env, f"{name}: starting instances {stopped} that should be running")
        await sets.power_now(session, stopped, "start", wait=True)
    if down[PowerState.SHUTTING_DOWN]:
        ids = down[PowerState.SHUTTING_DOWN]
        report.act(env, f"{name}: restarting instances {ids} left shutting down")
        await sets.power_now(session, ids, "restart", wait=True)
    # 7. new models an interrupted upgrade left uncommitted: healthy ones are kept
    latest = rolling.latest(env, name)
    if latest is None or not latest.running:
        for committed in await commit_healthy(session):
            report.act(env, f"{committed}: healthy on its new model; previous OS disk removed")
    # 8. instances a killed command booted but never saw settle are waited on, as the
    # command would have (bounded by their grace period)
    if interrupted:
        power = await watch.running_states(env)
        waiting = [i for i in store.list_instances(name)
                   if i.status == "active" and i.power_intent == "running"
                   and i.health.get("state") in (None, "Initializing")
                   and power.get(i.name) is PowerState.RUNNING]
        if waiting:
            report.act(env, f"{name}: waiting for instances "
                            f"{[i.instance_id for i in waiting]} to settle")
            await watch.await_health(watch.session_probe(session), waiting)
    # 9. automatic repairs: instances not Healthy for longer than the repair grace period
    due = await repairs.due(session)
    if due:
        await repairs.repair(session, due, report)


async def commit_healthy(session: Session) -> list[str]:
    """Instances left uncommitted by an interrupted upgrade: each running one is waited
    on until settled (Healthy, or its grace period over, counted from its boot); the
    healthy ones keep their new model (the previous OS disk goes), others keep it for
    a rollback."""
    store, name = session.store, session.set_name
    power = await watch.running_states(session.env)
    pending = [i for i in store.list_instances(name)
               if i.status == "active" and (i.prev_os_volume or i.prev_generation)
               and power.get(i.name) is PowerState.RUNNING]
    if not pending:
        return []
    final = await watch.await_health(watch.session_probe(session), pending)
    done = []
    for inst in pending:
        fresh = store.find_instance(name, inst.instance_id)
        if fresh is not None and final[inst.instance_id].state is HealthState.HEALTHY:
            await steps.commit_model(session.engine, fresh)
            done.append(inst.name)
    return done
