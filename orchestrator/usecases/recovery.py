"""Finishing what a killed process left on a set, and the session every command opens.

Owned here: ``command`` (a command's session: the set's lock, its journal entry, then the
set's interrupted work finished first, so the next command on a set resumes it),
``dead_operations``, ``interrupted``, ``finish_interrupted`` (dead operations marked with
the step they were in; half-created instances removed, half-deleted ones removed,
half-reimaged ones finished; then libvirt's objects win over the store: what no store row
owns goes, an active instance whose domain vanished is defined again on its own disks, a
domain a killed process redefined is recorded at its generation) and ``PassReport``.

A killed process is known by its set's lock being free (the kernel frees it when the
holder dies, zombie or not), never by its pid.

Called by: usecases.controller, usecases.osupgrades, usecases.repairs, usecases.rolling,
usecases.sets, usecases.updates
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from orchestrator.engine import steps
from orchestrator.errors import NotFound
from orchestrator.hypervisor.base import Ownership
from orchestrator.store import InstanceRecord, OperationRecord
from orchestrator.usecases import placement, removal, watch
from orchestrator.usecases.session import Env, Session, lock_is_free, open_session


@dataclass
class PassReport:
    """What a pass did (shown by `controller run`)."""

    actions: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"actions": self.actions, "problems": self.problems}

    def act(self, env: Env, line: str) -> None:
        self.actions.append(line)
        env.progress(line)


@contextlib.asynccontextmanager
async def command(env: Env, set_name: str, kind: str) -> AsyncIterator[Session]:
    """The session of a command on ``set_name``: locked, journaled, and with any work a
    killed process left on the set finished first."""
    async with open_session(env, set_name, kind) as session:
        if interrupted(session):
            await finish_interrupted(session, PassReport())
        yield session


def dead_operations(env: Env, set_name: str, *,
                    session: Session | None = None) -> list[OperationRecord]:
    """Operations of the set still marked running whose process is gone: inside a
    session (we hold the lock) every running one but ours; outside, every running one if
    the lock is free."""
    running = [op for op in env.store.list_operations(set_name) if op.status == "running"]
    if session is not None:
        return [op for op in running if op.id != session.operation_id]
    return running if lock_is_free(env, set_name) else []


def interrupted(session: Session) -> bool:
    """Whether a killed process left work on the set: an operation still marked running,
    or an instance half-created, -deleted or -reimaged."""
    return bool(dead_operations(session.env, session.set_name, session=session)) or any(
        i.status != "active" for i in session.store.list_instances(session.set_name))


def mark_dead(env: Env, set_name: str, ops: list[OperationRecord], report: PassReport) -> None:
    """Dead operations are marked ``interrupted``, with the steps they were in."""
    store = env.store
    for op in ops:
        now = env.engine.now()
        cut = store.interrupt_steps(op.id, now=now)
        where = "".join(f"; during {st.step} of {st.instance}" for st in cut)
        store.end_operation(op.id, "interrupted",
                            {**op.detail, "error": f"process {op.pid} stopped{where}"}, now=now)
        report.act(env, f"{set_name}: {op.kind} (operation {op.id}) was interrupted{where}")


async def finish_interrupted(session: Session, report: PassReport) -> bool:
    """Finish or undo what a killed process left on the set. True if a killed process's
    operation was found."""
    env, name = session.env, session.set_name
    dead = dead_operations(env, name, session=session)
    mark_dead(env, name, dead, report)
    for inst in session.store.list_instances(name):
        if inst.status == "deleting":
            report.act(env, f"{inst.name}: finishing an interrupted delete")
            await removal.teardown_and_forget(session, inst)
        elif inst.status == "creating":
            report.act(env, f"{inst.name}: removing a half-created instance")
            await removal.teardown_and_forget(session, inst)
        elif inst.status in (steps.REIMAGING, steps.REIMAGING_ALL_DISKS):
            report.act(env, f"{inst.name}: finishing an interrupted reimage")
            await _finish_reimage(session, inst)
    await _observed_wins(session, report)
    return bool(dead)


async def _finish_reimage(session: Session, inst: InstanceRecord) -> None:
    done = await steps.finish_reimage(session.engine, inst,
                                      model=session.model(inst.model_generation),
                                      profile=session.spec.model,
                                      image=await session.image(inst.image),
                                      admin_key=session.key.public_openssh)
    booted = watch.record_boot(session.store, session.engine.clock, done)
    await watch.await_health(watch.session_probe(session), [booted])


async def _observed_wins(session: Session, report: PassReport) -> None:
    """Where libvirt and the store disagree, libvirt's objects are the facts: what it
    holds of this set that no store row names is removed (nothing else will ever
    remove it), and an active instance whose domain is gone is defined again."""
    env, name = session.env, session.set_name
    instances = session.store.list_instances(name)
    owners: dict[str, Ownership | None] = {}
    listed, unreachable = await placement.list_domains(env)  # unreachable: left alone
    for w, domains in listed:
        here = [i for i in instances if i.host == w.name]
        networks = {i.network for i in here} | {w.host.network_for(session.spec.model.network)}
        orphans = await steps.find_orphans(env.engine, w, name,
                                           known={i.instance_id for i in here},
                                           networks=networks, domains=domains)
        if orphans:
            where = f" on host {w.name}" if w.host.registered else ""
            report.act(env, f"{name}: removing what no instance owns{where}: "
                            f"{orphans.describe()}")
            problems = await steps.remove_orphans(env.engine, orphans)
            report.problems.extend(f"{name}: {p}" for p in problems)
        owners.update({d.name: d.owner for d in domains})
    for inst in instances:
        if inst.status != "active" or inst.host in unreachable:
            continue
        if inst.name not in owners:
            report.act(env, f"{inst.name}: its domain is gone from libvirt; defining it "
                            "again on its remaining disks")
            await _recreate_missing(session, inst)
            continue
        owner = owners[inst.name]
        if owner is None or owner.generation == inst.model_generation:
            continue
        if await _adopt_generation(session, inst, owner.generation):
            report.act(env, f"{inst.name}: its domain runs generation {owner.generation}, "
                            f"not {inst.model_generation}; recorded as such")
        else:
            report.problems.append(
                f"{inst.name}: its domain says generation {owner.generation}, the store "
                f"{inst.model_generation}, and the disks of the former are missing")


async def _recreate_missing(session: Session, inst: InstanceRecord) -> None:
    """An instance the store holds as active whose domain libvirt no longer has (undefined
    by hand, lost with the host's libvirt config): defined again with the same name, MAC,
    IP and host key, on the volumes that remain (missing ones are made anew), and started
    if the user wants it running (then its health is awaited, as after any start)."""
    running = inst.power_intent == "running"
    with session.engine.step(inst, "recreate"):
        await steps.provision(session.engine, inst, session.model(inst.model_generation),
                              await session.image(inst.image),
                              admin_key=session.key.public_openssh,
                              start=running)
    if running:
        booted = watch.record_boot(session.store, session.engine.clock, inst)
        await watch.await_health(watch.session_probe(session), [booted])


async def _adopt_generation(session: Session, inst: InstanceRecord, generation: int) -> bool:
    """Record the generation the instance's domain was defined with (see
    ``steps.adopt_generation``); False if that cannot be done safely."""
    try:
        model = session.model(generation)
    except NotFound:
        return False
    image = session.env.registry.get(model.image)
    with session.engine.step(inst, "adopt-generation"):
        adopted = await steps.adopt_generation(session.engine, inst, generation=generation,
                                               image=image)
    if adopted is None:
        return False
    # started by the dead process at a time nobody recorded: its grace period starts now
    watch.record_boot(session.store, session.engine.clock, adopted)
    return True
