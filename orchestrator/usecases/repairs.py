"""Automatic instance repairs (docs/semantics.md#automatic-repairs): while the controller
runs, an instance that stays not Healthy for longer than the set's repair grace period is
replaced, restarted or reimaged.

Owned here: suspending and resuming the ``AutomaticRepairs`` orchestration service of a
set (``set_service_state``; the state shown is ``views.service_state``), finding
the instances due (``due``: one probe round, then ``policy.repairs_due``), carrying out a
round of repairs (``repair``: one journal operation ``repair``) and counting failed
repairs in a row until the service suspends itself. The decisions are ``engine.policy``'s.
Called by: cli.vmss, usecases.controller
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from orchestrator.engine import policy
from orchestrator.engine.health import HealthState, record_from_json
from orchestrator.errors import InvalidInput, OperationFailed, OrchError
from orchestrator.hypervisor.base import PowerState
from orchestrator.records import InstanceRecord, ServiceRecord
from orchestrator.usecases import placement, rolling, rollout, sets, views, watch
from orchestrator.usecases.recovery import PassReport, command
from orchestrator.usecases.session import Env, Session, journal

SERVICE, SERVICES = views.AUTOMATIC_REPAIRS, views.SERVICES
RUNNING, SUSPENDED = views.RUNNING, views.SUSPENDED
service_state = views.service_state


def _record(env: Env, set_name: str) -> ServiceRecord:
    return env.store.service(set_name, SERVICE) or ServiceRecord(
        set_name, SERVICE, RUNNING, 0, env.engine.now())


async def set_service_state(env: Env, set_name: str, *, service: str, action: str) -> str:
    """``Suspend`` or ``Resume`` a service of the set (Resume also forgets the failed
    repairs counted so far); the state it is in after."""
    if service not in SERVICES:
        raise InvalidInput(f"unknown orchestration service {service!r} (one of: "
                           f"{', '.join(SERVICES)})")
    if action not in ("Suspend", "Resume"):
        raise InvalidInput(f"unknown action {action!r}: Suspend or Resume")
    spec = env.spec_of(set_name)  # an unknown set is refused before the lock
    async with command(env, set_name, f"{action.lower()}-{service}") as session:
        rec = _record(env, set_name)
        state = SUSPENDED if action == "Suspend" else RUNNING
        env.store.put_service(ServiceRecord(set_name, service, state,
                                            rec.failures if state == SUSPENDED else 0,
                                            env.engine.now()))
        session.progress(f"{set_name}: {service} {state.lower()}")
        env.store.add_event(set_name, f"{service} {state}", now=env.engine.now())
    return service_state(env, set_name, spec)


async def due(session: Session) -> list[int]:
    """The instances to repair now ([] while repairs are off, suspended, or blocked by a
    rolling upgrade or a scale): the set's running instances are probed once first, so the
    verdict rests on what they answer now."""
    env, name, spec = session.env, session.set_name, session.spec
    instances = session.store.list_instances(name)
    upgrade = rolling.latest(env, name)
    blocked = policy.repairs_blocked(
        enabled=spec.automatic_repairs_policy.enabled,
        suspended=service_state(env, name, spec) == SUSPENDED,
        upgrading=upgrade is not None and upgrade.running,
        scaling=len(instances) != spec.capacity or any(i.status != "active" for i in instances))
    if blocked:
        return []
    observed = await placement.observe_power(env)
    wanted = [i for i in instances if i.power_intent == "running"
              and i.host not in observed.unreachable
              and observed.states.get(i.name) is PowerState.RUNNING]
    await watch.probe_round(watch.session_probe(session), wanted, power=observed.states)
    now = env.clock.monotonic()
    ailing = []
    for inst in session.store.list_instances(name):
        if inst.instance_id not in {i.instance_id for i in wanted}:
            continue
        rec = record_from_json(inst.health, env.clock)
        if rec.state in (HealthState.UNHEALTHY, HealthState.UNKNOWN):
            since = max(rec.booted_at, rec.changed_at or rec.booted_at)
            ailing.append(policy.Ailing(inst.instance_id, now - since,
                                        inst.protect_from_scale_set_actions))
    return policy.repairs_due(ailing, capacity=spec.capacity,
                              grace_seconds=spec.automatic_repairs_policy.grace_seconds)


async def repair(session: Session, ids: Sequence[int], report: PassReport) -> None:
    """Repair ``ids`` at once with the set's repair action, as one journal operation
    ``repair``; then count the failures, suspending the service at the third in a row."""
    env, name = session.env, session.set_name
    repairs = session.spec.automatic_repairs_policy
    action = repairs.repair_action
    report.act(env, f"{name}: repairing instances {list(ids)} ({action}): not Healthy for "
                    f"longer than {repairs.grace_period}")
    with journal(env, name, "repair") as entry:
        entry.detail.update(action=action, instances=list(ids))
        seen = set(env.console_tails)
        try:
            failed = await _act(session, session.instances(list(ids)), action)
        except OrchError as exc:
            failed = {i: exc.one_line() for i in ids}
        entry.detail["repaired"] = [i for i in ids if i not in failed]
        tails = {n: list(lines) for n, lines in env.console_tails.items() if n not in seen}
        if tails:  # the last console lines of what did not become Healthy
            entry.detail["consoleTails"] = tails
        if failed:
            entry.detail["error"] = "; ".join(
                f"{name}-{i}: {action} did not make it Healthy ({why})"
                for i, why in sorted(failed.items()))
            report.problems.append(f"{name}: repair: {entry.detail['error']}")
    rec = _record(env, name)
    failures, suspend = policy.after_repairs(rec.failures, succeeded=len(ids) - len(failed),
                                             failed=len(failed))
    state = SUSPENDED if suspend else rec.state
    env.store.put_service(ServiceRecord(name, SERVICE, state, failures, env.engine.now()))
    if suspend and rec.state != SUSPENDED:
        report.act(env, f"{name}: {SERVICE} suspended after {failures} failed repairs in a row "
                        f"(`orch vmss set-orchestration-service-state --name {name} "
                        f"--service-name {SERVICE} --action Resume` resumes it)")
        env.store.add_event(name, f"{SERVICE} Suspended after {failures} failed repairs",
                            now=env.engine.now())


async def _act(session: Session, instances: list[InstanceRecord], action: str) -> dict[int, str]:
    """Carry out ``action`` on ``instances`` at once; the ones not Healthy after, and why."""
    ids = [i.instance_id for i in instances]
    if action == "Restart":
        with contextlib.suppress(OperationFailed):  # who is not Healthy is read back below
            await sets.power_now(session, ids, "restart", wait=True)
        after = {i.instance_id: i for i in session.instances(ids)}
        return {i: str(after[i].health.get("state") or "not Healthy") for i in ids
                if after[i].health.get("state") != HealthState.HEALTHY.value}
    if action == "Reimage":
        outcomes = await rollout.bring(session, instances, rollout.Reimage(False))
        return {o.instance_id: o.error or "not Healthy" for o in outcomes if not o.healthy}
    # Replace: new instances of the latest model in the old ones' fault domains; a
    # replacement that does not become Healthy is removed and its old instance stays
    outcomes = await rolling.surge_batch(session, instances)
    failed: dict[int, str] = {}
    for old, outcome in zip(instances, outcomes, strict=True):
        if outcome.healthy:
            session.progress(f"{old.name}: replaced by {session.set_name}-{outcome.instance_id}")
        else:
            failed[old.instance_id] = outcome.error or "not Healthy"
    return failed
