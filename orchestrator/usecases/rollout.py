"""Bringing instances to a generation: the one code path by which an instance gets a new
model in place, returns to its previous one, or is reimaged. ``update-instances``,
Automatic mode, an in-place Rolling batch, reimage and rollback all go through ``bring``;
so will repairs.

Owned here: ``Change`` and its kinds (``ToLatest``, ``ToPrevious``, ``Reimage``),
``Outcome`` (what happened to one instance), ``bring`` (act on instances concurrently,
wait for their health, commit the healthy ones, report each) and ``raise_failed``.

Called by: usecases.repairs, usecases.rolling, usecases.updates
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orchestrator.engine import steps
from orchestrator.engine.health import HealthRecord, HealthState
from orchestrator.errors import HypervisorUnavailable, OperationFailed, OrchError
from orchestrator.store import InstanceRecord
from orchestrator.usecases import bootdiag, watch
from orchestrator.usecases.session import Session


@dataclass(frozen=True)
class Outcome:
    """What happened to one instance: healthy on its new state, or why not."""

    instance_id: int
    healthy: bool
    error: str | None = None
    health: HealthRecord | None = None  # the settled record, when health was awaited
    unreachable: bool = False  # its host stopped answering: nothing was decided for it


class Change:
    """One way of bringing an instance to a generation."""

    commits = False  # a healthy instance's previous OS disk is dropped afterwards

    def describe(self, session: Session, inst: InstanceRecord) -> str:
        raise NotImplementedError

    async def act(self, session: Session, inst: InstanceRecord) -> InstanceRecord:
        raise NotImplementedError


class ToLatest(Change):
    """The set's latest model, in place (same instanceId, name, MAC, IP, data disks)."""

    commits = True

    def describe(self, session: Session, inst: InstanceRecord) -> str:
        return (f"{inst.name}: applying generation {session.record.generation} "
                f"({session.shown(session.spec.model.image)})")

    async def act(self, session: Session, inst: InstanceRecord) -> InstanceRecord:
        model = session.spec.model
        return await steps.apply_model(session.engine, inst, model=model,
                                       generation=session.record.generation,
                                       image=await session.image(model.image))


class ToPrevious(Change):
    """The generation the instance ran before its last change (its OS disk was kept)."""

    def describe(self, session: Session, inst: InstanceRecord) -> str:
        return (f"{inst.name}: rolling back to generation {inst.prev_generation} "
                f"({inst.prev_image})")

    async def act(self, session: Session, inst: InstanceRecord) -> InstanceRecord:
        return await steps.rollback(session.engine, inst,
                                    model=session.model(inst.prev_generation),
                                    image=session.env.registry.get(inst.prev_image))


@dataclass(frozen=True)
class Reimage(Change):
    """A fresh OS disk on the instance's own image, a fresh seed from the latest OS
    profile; data disks kept unless ``all_disks``."""

    all_disks: bool = False

    def describe(self, session: Session, inst: InstanceRecord) -> str:
        return (f"{inst.name}: reimaging from {inst.image}"
                + (" (all disks)" if self.all_disks else ""))

    async def act(self, session: Session, inst: InstanceRecord) -> InstanceRecord:
        return await steps.reimage(session.engine, inst,
                                   model=session.model(inst.model_generation),
                                   profile=session.spec.model,
                                   image=await session.image(inst.image),
                                   admin_key=session.key.public_openssh,
                                   all_disks=self.all_disks)


async def bring(session: Session, instances: Sequence[InstanceRecord], change: Change, *,
                wait: bool = True) -> list[Outcome]:
    """Apply ``change`` to ``instances`` concurrently, then (``wait``) wait for their
    health; the healthy ones are committed when the change commits. One outcome per
    instance, by instanceId; a step that failed is an unhealthy outcome with its error."""
    engine = session.engine

    async def one(inst: InstanceRecord) -> InstanceRecord | Outcome:
        session.progress(change.describe(session, inst))
        try:
            done = await change.act(session, inst)
        except HypervisorUnavailable as exc:
            session.progress(f"{inst.name}: its host {inst.host} does not answer: "
                             f"{exc.one_line()}")
            return Outcome(inst.instance_id, False, exc.one_line(), unreachable=True)
        except OrchError as exc:
            session.progress(f"{inst.name}: failed: {exc.one_line()}")
            return Outcome(inst.instance_id, False, exc.one_line())
        return watch.record_boot(session.store, engine.clock, done)

    started = await asyncio.gather(*(one(i) for i in instances))
    booted = [s for s in started if isinstance(s, InstanceRecord)]
    outcomes = [s for s in started if isinstance(s, Outcome)]
    if not wait:
        return sorted(outcomes + [Outcome(i.instance_id, True) for i in booted],
                      key=lambda o: o.instance_id)
    final = await watch.await_health(watch.session_probe(session), booted)
    for inst in booted:
        health = final[inst.instance_id]
        ok = health.state is HealthState.HEALTHY
        if ok and change.commits:
            fresh = session.store.find_instance(session.set_name, inst.instance_id)
            if fresh is not None:
                await steps.commit_model(engine, fresh)
        outcomes.append(Outcome(inst.instance_id, ok, None if ok else health.state.value,
                                health))
    return sorted(outcomes, key=lambda o: o.instance_id)


def raise_failed(action: str, set_name: str, outcomes: Sequence[Outcome], *,
                 console: Mapping[str, Sequence[str]] | None = None) -> None:
    """OperationFailed naming every instance of ``outcomes`` that did not end healthy, with
    the last console lines ``console`` (``Env.console_tails``) holds of them as details."""
    bad = [o for o in outcomes if not o.healthy]
    if bad:
        names = "; ".join(f"{set_name}-{o.instance_id} {o.error or 'unhealthy'}" for o in bad)
        raise OperationFailed(
            f"{action}: {len(bad)} of {len(outcomes)} instances failed: {names}",
            details=bootdiag.error_details(console or {},
                                           [f"{set_name}-{o.instance_id}" for o in bad]))
