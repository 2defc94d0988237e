"""Removing instances: torn down in libvirt, then forgotten by the store.

Owned here: ``delete_now`` (mark ``deleting``, tear down concurrently, forget those fully
removed; the problems of the others named in one error) and ``teardown_and_forget`` (one
instance, journaled). Every removal of an instance goes through here: scale-in,
``delete-instances``, ``delete``, a failed create, a surge batch, and recovery.

Called by: usecases.recovery, usecases.rolling, usecases.sets
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from orchestrator.engine import steps
from orchestrator.errors import OperationFailed, OrchError
from orchestrator.store import InstanceRecord
from orchestrator.usecases.session import Session


async def _teardown(session: Session, inst: InstanceRecord) -> None:
    with session.engine.step(inst, "teardown"):
        problems = await steps.teardown(session.engine, inst)
        if problems:
            raise OperationFailed(
                f"{inst.name}: could not remove everything: {'; '.join(problems)}")


async def teardown_and_forget(session: Session, inst: InstanceRecord) -> None:
    await _teardown(session, inst)
    session.store.delete_instance(inst.set_name, inst.instance_id)


async def delete_now(session: Session, victims: Sequence[InstanceRecord]) -> None:
    """Tear the victims down concurrently, then forget those fully removed."""
    marked = [session.store.update_instance(v, status="deleting") for v in victims]
    for inst in marked:
        session.progress(f"{inst.name}: deleting")
    results = await asyncio.gather(*(_teardown(session, i) for i in marked),
                                   return_exceptions=True)
    failures: list[str] = []
    for inst, result in zip(marked, results, strict=True):
        if isinstance(result, OrchError):
            failures.append(result.message)
        elif isinstance(result, BaseException):
            raise result
        else:
            session.store.delete_instance(inst.set_name, inst.instance_id)
    if failures:
        raise OperationFailed("; ".join(failures))
