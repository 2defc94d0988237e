"""Rolling upgrades: the driver that walks a set's instances to the latest model in
batches, in place or with MaxSurge, gated by health; and its start, cancel and status.

Owned here: ``start`` (refuses a second live upgrade, finishes a surge batch a killed
driver left, checks surge room, records the upgrade), ``roll`` (the batch loop: the
thresholds' view of the set's health kept current by a ``watch.Monitor`` while each batch
runs, pause, cancel, rollback on breach), ``surge_batch``, ``surge_shortage`` and
``cancel``. Which instances a batch takes and when to stop is ``engine.policy``'s; the
persisted state is ``engine.upgrade_state.RollingUpgrade``.

Called by: api.routes, cli.vmss, dryrun.plan, usecases.controller, usecases.osupgrades,
usecases.repairs, usecases.updates
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from orchestrator.engine import policy
from orchestrator.engine.addresses import free_addresses
from orchestrator.engine.health import HealthState
from orchestrator.engine.hosts import LOCAL
from orchestrator.engine.upgrade_state import (
    BatchRecord,
    LastAction,
    Progress,
    RollingStatus,
    RollingUpgrade,
)
from orchestrator.errors import Conflict, InvalidInput, NotFound, OperationFailed
from orchestrator.model import RollingUpgradePolicy, ScaleSetSpec, validate
from orchestrator.store import InstanceRecord
from orchestrator.usecases import bootdiag, placement, removal, rollout, sets, watch
from orchestrator.usecases.recovery import command
from orchestrator.usecases.session import Env, Session, lock_is_free, open_session


def load(env: Env, upgrade_id: int) -> RollingUpgrade:
    return RollingUpgrade.from_storage(env.store.get_rolling_upgrade(upgrade_id))


def latest(env: Env, set_name: str) -> RollingUpgrade | None:
    row = env.store.latest_rolling_upgrade(set_name)
    return RollingUpgrade.from_storage(row) if row is not None else None


def save(env: Env, upgrade: RollingUpgrade) -> RollingUpgrade:
    env.store.update_rolling_upgrade(env.store.get_rolling_upgrade(upgrade.id),
                                     **upgrade.for_storage())
    return upgrade


def status(env: Env, set_name: str) -> RollingUpgrade:
    """The latest rolling upgrade (`rolling-upgrade get-latest`)."""
    env.store.get_set(set_name)
    found = latest(env, set_name)
    if found is None:
        raise NotFound(f"scale set {set_name} has had no rolling upgrade")
    return found


def raise_if_faulted(upgrade: RollingUpgrade, *, prefix: str = "rolling upgrade",
                     console: Mapping[str, Sequence[str]] | None = None) -> None:
    """OperationFailed if ``upgrade`` ended Faulted, with the last console lines of every
    instance its batches left not Healthy (``console``: ``Env.console_tails`` of the
    command; a failed surge replacement's were read before it was deleted) as details."""
    if upgrade.status is RollingStatus.FAULTED:
        raise OperationFailed(f"{prefix} Faulted: {upgrade.error}",
                              details=bootdiag.error_details(console or {}))


# --- start ---------------------------------------------------------------------------------
def check_mode(env: Env, set_name: str) -> None:
    """InvalidInput unless the set's upgrade policy is Rolling (what `start` needs)."""
    spec = env.spec_of(set_name)
    if policy.rollout_of(spec.upgrade_policy.mode) != "rolling":
        raise InvalidInput(f"scale set {set_name} has upgrade policy {spec.upgrade_policy.mode}; "
                           "rolling upgrades need mode Rolling")


async def start(env: Env, set_name: str, *, allow_surge_fallback: bool = False) -> RollingUpgrade:
    """`rolling-upgrade start`: roll the latest model out, waiting until it ends."""
    check_mode(env, set_name)
    async with command(env, set_name, "rolling-upgrade") as session:
        return await start_in(session, allow_surge_fallback=allow_surge_fallback)


async def start_in(session: Session, *, allow_surge_fallback: bool = False) -> RollingUpgrade:
    """Start (and drive to its end) a rolling upgrade within ``session``. An upgrade still
    RollingForward is one a killed driver left (we hold the lock): it is superseded, its
    in-flight surge batch finished first."""
    env, name = session.env, session.set_name
    previous = latest(env, name)
    if previous is not None and previous.running:
        why = (previous.cancel_note if previous.cancel_note
               and previous.cancel_note.startswith("paused") else
               f"interrupted: the process driving it (pid {previous.driver_pid}) stopped")
        save(env, previous.with_(status=RollingStatus.CANCELLED, end_time=env.engine.now(),
                                 cancel_note=f"{why}; superseded"))
        await _finish_surge_batch(session, previous)
    spec = session.spec
    rolling = spec.upgrade_policy.rolling_upgrade_policy
    surge, fallback_note = rolling.max_surge, None
    if surge:
        shortage = await surge_shortage(session)
        if shortage:
            if not allow_surge_fallback:
                raise InvalidInput(surge_refusal(shortage))
            fallback_note = f"maxSurge fell back to in-place: host lacks {shortage}"
            session.progress(f"warning: {fallback_note}")
            surge = False
    generation = session.record.generation
    instances = session.store.list_instances(name)
    row = session.store.add_rolling_upgrade(
        name, target_generation=generation, policy=rolling.to_json_dict(),
        progress=Progress(pending=sum(1 for i in instances
                                      if i.model_generation != generation)).for_storage(),
        now=env.engine.now())
    upgrade = save(env, RollingUpgrade.from_storage(row).with_(
        driver_pid=os.getpid(), surge=surge, surge_fallback=fallback_note,
        thresholds=tuple(policy.thresholds(rolling, spec.capacity))))
    return await roll(session, upgrade)


# --- the driver ----------------------------------------------------------------------------
async def roll(session: Session, upgrade: RollingUpgrade) -> RollingUpgrade:
    env, name = session.env, session.set_name
    rolling = validate(RollingUpgradePolicy, upgrade.policy)
    target = upgrade.target_generation
    upgraded: dict[int, bool] = {}  # instanceId (or its surge replacement) -> healthy
    attempted: set[int] = set()  # never tried twice within one upgrade
    successful = failed = 0
    probe = watch.session_probe(session)

    def end(up: RollingUpgrade, code: RollingStatus, error: str | None,
            **changes: object) -> RollingUpgrade:
        session.progress(f"{name}: rolling upgrade {code.value}" + (f": {error}" if error else ""))
        return save(env, up.with_(status=code, error=error, end_time=env.engine.now(), **changes))

    async def faulted(up: RollingUpgrade, reason: str | None,
                      progress: Progress) -> RollingUpgrade:
        failures = [i for i, healthy in upgraded.items() if not healthy]
        note = None
        if policy.on_breach(rolling, surge=up.surge, failed=failures) == "rollback":
            note = await _rollback(session, failures)
        return end(load(env, up.id), RollingStatus.FAULTED, reason, progress=progress,
                   **({"rollback_note": note} if note else {}))

    def members(monitor: watch.Monitor,
                instances: list[InstanceRecord]) -> list[policy.Member]:
        """Every instance with its current health: the monitor's latest round for those it
        probed, the settled record for the others (the batch just done)."""
        out = []
        fd_of = placement.fault_domains(env)
        for i in instances:
            if i.instance_id in monitor.probed:
                healthy = monitor.states.get(i.instance_id) is HealthState.HEALTHY
            else:
                healthy = i.health.get("state") == HealthState.HEALTHY.value
            out.append(policy.Member(i.instance_id, i.model_generation, healthy,
                                     i.protect_from_scale_set_actions,
                                     fd_of.get(i.host, i.host)))
        return out

    async with watch.monitoring(probe) as monitor:
        monitor.watched = frozenset(i.instance_id for i in session.store.list_instances(name))
        await monitor.round()
        # the set as read after the last batch, if nothing has awaited since: still current
        unchanged: list[InstanceRecord] | None = None
        while True:
            upgrade = load(env, upgrade.id)
            if upgrade.cancel_requested:
                return end(upgrade, RollingStatus.CANCELLED, None,
                           cancel_note="cancelled between batches: no batch was in flight")
            capacity = session.spec.capacity
            # once per batch: 1000s of rows
            instances = unchanged if unchanged is not None else session.store.list_instances(name)
            unchanged = None
            now_members = members(monitor, instances)
            host_of = {i.instance_id: i.host for i in instances}
            # instances on a host that does not answer wait for it (they count unhealthy)
            waiting = {m.instance_id for m in policy.pending(now_members, target,
                                                             frozenset(attempted))
                       if host_of.get(m.instance_id) in monitor.unreachable}
            skip = frozenset(attempted | waiting)
            verdict = policy.next_batch(now_members, target=target, policy=rolling,
                                        capacity=capacity, skip=skip)
            pending_count = len(policy.pending(now_members, target, frozenset(attempted)))
            if verdict.kind == "completed" and waiting:
                hosts = sorted({host_of[i] for i in waiting})
                note = (f"paused: host {', '.join(hosts)} does not answer; instances "
                        f"{', '.join(str(i) for i in sorted(waiting))} wait for it")
                save(env, upgrade.with_(progress=Progress(successful, failed, 0, pending_count),
                                        cancel_note=note))
                session.progress(f"{name}: rolling upgrade {note}")
                raise OperationFailed(f"rolling upgrade of {name} {note}; `orch controller run` "
                                      "finishes it once the host is back")
            if verdict.kind == "completed":
                return end(upgrade, RollingStatus.COMPLETED, None,
                           progress=Progress(successful, failed, 0, 0))
            if verdict.kind == "faulted":
                return await faulted(upgrade, verdict.reason,
                                     Progress(successful, failed, 0, pending_count))
            number = len(upgrade.batches) + 1
            attempted.update(verdict.batch)
            batch = [i for i in instances if i.instance_id in verdict.batch]
            session.progress(f"{name}: batch {number}: instances "
                             f"{', '.join(str(i.instance_id) for i in batch)}"
                             + (" (surge)" if upgrade.surge else " (in place)"))
            started = env.clock.now().timestamp()
            upgrade = save(env, upgrade.with_(
                progress=Progress(successful, failed, len(batch), pending_count - len(batch)),
                in_flight=tuple(i.instance_id for i in batch), in_flight_started=started,
                # a surge batch's replacements get the ids from here on, in batch order
                first_new_id=session.record.next_instance_id))
            # while the batch runs, the other instances' health is kept current
            monitor.watched = frozenset(i.instance_id for i in instances
                                        if i.instance_id not in verdict.batch)
            outcomes = await (surge_batch(session, batch) if upgrade.surge
                              else rollout.bring(session, batch, rollout.ToLatest()))
            lost = [o.instance_id for o in outcomes if o.unreachable]
            attempted.difference_update(lost)  # undecided: tried again once its host answers
            outcomes = [o for o in outcomes if not o.unreachable]
            for o in outcomes:
                upgraded[o.instance_id] = o.healthy
            ok = [o.instance_id for o in outcomes if o.healthy]
            bad = [o.instance_id for o in outcomes if not o.healthy]
            successful += len(ok)
            failed += len(bad)
            after = Progress(successful, failed, 0, pending_count - len(batch))
            upgrade = save(env, load(env, upgrade.id).with_(
                progress=after, in_flight=(), in_flight_started=None,
                batches=(*upgrade.batches, BatchRecord(
                    number, tuple(verdict.batch), tuple(ok), tuple(bad), started,
                    env.clock.now().timestamp()))))
            breach = policy.check_upgraded(
                [policy.Member(i, target, h) for i, h in upgraded.items()], rolling)
            if breach:
                return await faulted(upgrade, breach, after)
            if load(env, upgrade.id).cancel_requested:
                return end(upgrade, RollingStatus.CANCELLED, None,
                           cancel_note=f"the in-flight batch {number} was completed; "
                                       "no new batch was started")
            done = session.store.list_instances(name)
            left = policy.pending(members(monitor, done), target, frozenset(attempted))
            if rolling.pause_seconds > 0 and left:
                session.progress(f"{name}: pausing {rolling.pause_time_between_batches}")
                await env.clock.sleep(rolling.pause_seconds)
            else:
                unchanged = done
            # the instances of the batch just done are watched from now on too (a pause
            # changes health only: the instances are this driver's while it holds the lock)
            monitor.watched = frozenset(i.instance_id for i in done)


async def surge_batch(session: Session, batch: Sequence[InstanceRecord]) -> list[rollout.Outcome]:
    """MaxSurge: new instances (new ids) on the latest model first; once healthy, the old
    ones of the batch go. A replacement that fails is removed; its old instance stays."""
    image = await session.image(session.spec.model.image)
    fd_of = placement.fault_domains(session.env)
    # the replacements go where the old instances are, if that fault domain has room
    same = sorted({fd_of.get(i.host, i.host) for i in batch})
    try:
        created = await sets.scale_out(session, image, len(batch),
                                       generation=session.record.generation, fault_domains=same)
    except InvalidInput as exc:
        if not (session.engine.fleet and session.engine.fleet.registered):
            raise
        session.progress(f"{session.set_name}: fault domain {', '.join(same)} has no room for "
                         f"the surge ({exc.message}); placing the replacements elsewhere")
        created = await sets.scale_out(session, image, len(batch),
                                       generation=session.record.generation)
    final = await watch.await_health(watch.session_probe(session), created)
    outcomes: list[rollout.Outcome] = []
    for old, new in zip(batch, created, strict=True):
        ok = final[new.instance_id].state is HealthState.HEALTHY
        if ok:
            await removal.delete_now(session, [old])
            outcomes.append(rollout.Outcome(new.instance_id, True))
        else:
            await removal.delete_now(session, [new])
            outcomes.append(rollout.Outcome(old.instance_id, False,
                                            final[new.instance_id].state.value))
    return outcomes


async def _finish_surge_batch(session: Session, dead: RollingUpgrade) -> None:
    """The surge batch a killed driver left in flight is finished as ``surge_batch``
    would have: each replacement that exists is awaited; a healthy one takes its old
    instance's place (the old one goes), an unhealthy one goes. A replacement never
    made leaves its old instance for the next batches. Without this the resumed
    upgrade would count the replacements as upgraded instances and keep the old ones
    too: more instances than capacity for good."""
    first_new = dead.first_new_id
    if not dead.surge or not dead.in_flight or first_new is None:
        return
    by_id = {i.instance_id: i for i in session.store.list_instances(session.set_name)}
    pairs = [(by_id.get(old), by_id[first_new + k]) for k, old in enumerate(dead.in_flight)
             if first_new + k in by_id and by_id[first_new + k].status == "active"]
    if not pairs:
        return
    session.progress(f"{session.set_name}: finishing the interrupted surge batch "
                     f"(instances {', '.join(str(i) for i in dead.in_flight)})")
    final = await watch.await_health(watch.session_probe(session), [new for _, new in pairs])
    going = [old if final[new.instance_id].state is HealthState.HEALTHY else new
             for old, new in pairs]
    await removal.delete_now(session, [i for i in going if i is not None])


async def _rollback(session: Session, ids: Sequence[int]) -> str:
    """Return the failed instances ``ids`` to their previous model, concurrently."""
    todo = [i for i in session.store.list_instances(session.set_name)
            if i.instance_id in ids and i.prev_generation]
    outcomes = await rollout.bring(session, todo, rollout.ToPrevious())
    states = ", ".join(f"{session.set_name}-{o.instance_id} "
                       f"{o.health.state.value if o.health else o.error}" for o in outcomes)
    return f"rolled back to the previous model: {states}"


# --- cancel ------------------------------------------------------------------------------
async def cancel(env: Env, set_name: str) -> RollingUpgrade:
    """Ask the driver to stop after its in-flight batch; an upgrade nobody drives (its
    process died: the set's lock is free) stops here."""
    env.store.get_set(set_name)
    found = latest(env, set_name)
    if found is None or not found.running:
        raise InvalidInput(f"scale set {set_name} has no rolling upgrade in progress")
    env.store.request_cancel(found.id)
    if lock_is_free(env, set_name):
        try:
            async with open_session(env, set_name, "rolling-upgrade-cancel"):
                current = load(env, found.id)
                if current.running:
                    save(env, current.with_(status=RollingStatus.CANCELLED,
                                            last_action=LastAction.CANCEL,
                                            end_time=env.engine.now(),
                                            cancel_note="no batch was in flight"))
        except Conflict:
            pass  # a driver took the lock meanwhile: it sees the request
    return load(env, found.id)


# --- room for a surge -----------------------------------------------------------------------
def surge_refusal(shortage: str) -> str:
    return (f"maxSurge needs {shortage}; free capacity or pass --allow-surge-fallback "
            "to upgrade in place")


async def surge_shortage(session: Session, spec: ScaleSetSpec | None = None) -> str | None:
    """What the host lacks for one surge batch (memory, pool space, addresses) of the
    set's recorded spec, or of ``spec`` about to be recorded; None if nothing."""
    env = session.env
    spec = spec if spec is not None else session.spec
    batch = policy.batch_size(spec.upgrade_policy.rolling_upgrade_policy, spec.capacity)
    model = spec.model
    image = env.registry.get(model.image)
    if env.engine.fleet is not None and env.engine.fleet.registered:
        verdict = policy.place(await placement.rooms(env, session.set_name, model), batch,
                               memory_bytes=model.memory_mib * 2**20,
                               disk_bytes=placement.disk_bytes(model, image),
                               fault_domains=model.fault_domains)
        return verdict if isinstance(verdict, str) else None
    need_mem = batch * model.memory_mib * 2**20
    need_disk = batch * (sum(d.size_gib for d in model.data_disks) * 2**30
                         + image.virtual_size + 2**20)
    local = env.engine.at(LOCAL)
    have_mem = (await env.engine.io(local.hv.host_info)).memory_bytes_available
    pool = await env.engine.io(local.hv.pool_info, local.pool)
    free_ips = len(await free_addresses(env.engine, LOCAL, model.network))
    lacks = []
    if need_mem > have_mem:
        lacks.append(f"{need_mem // 2**20} MiB of memory ({have_mem // 2**20} MiB available)")
    if need_disk > pool.available_bytes:
        lacks.append(f"{need_disk // 2**20} MiB in pool {pool.name} "
                     f"({pool.available_bytes // 2**20} MiB free)")
    if batch > free_ips:
        lacks.append(f"{batch} free addresses on {model.network} ({free_ips} free)")
    return "; ".join(lacks) or None
