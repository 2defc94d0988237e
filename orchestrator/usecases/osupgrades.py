"""Automatic OS image upgrades (docs/semantics.md#automatic-os-upgrades): a set whose model
names ``NAME:latest`` with ``enableAutomaticOSUpgrade`` follows NAME's newest registered
version, rolled out by the controller with the set's rolling policy; a rollout that ends
Faulted returns the instances it upgraded to the version they ran (unless
``disableAutomaticRollback``), and that version is passed over from then on.

Owned here: when a set is due an OS upgrade (``due``), one run (``upgrade``: its history
record, the new generation, the rollout, the automatic rollback), and the history
(``history``). Which version ``NAME:latest`` is, is ``images.Registry.get`` and
``Session.image`` (which passes over failed versions); batches and thresholds are
``usecases.rolling``'s.
Called by: cli.vmss, usecases.controller
"""

from __future__ import annotations

from orchestrator.engine.upgrade_state import RollingStatus
from orchestrator.images import Image
from orchestrator.model import LATEST, parse_image_ref, version_key
from orchestrator.records import OsUpgradeRecord
from orchestrator.usecases import rolling
from orchestrator.usecases.recovery import PassReport
from orchestrator.usecases.session import Env, Session

RUNNING, SUCCEEDED, FAULTED, ROLLED_BACK = "Running", "Succeeded", "Faulted", "RolledBack"


def follows_latest(session: Session) -> bool:
    spec = session.spec
    return (spec.upgrade_policy.automatic_os_upgrade_policy.enable_automatic_os_upgrade
            and parse_image_ref(spec.model.image)[1] == LATEST)


async def due(session: Session) -> Image | None:
    """The version the set's instances should be brought to, when some run an older one
    and no rolling upgrade runs; else None (an instance left on a newer version that failed,
    with disableAutomaticRollback, stays on it)."""
    if not follows_latest(session):
        return None
    upgrade = rolling.latest(session.env, session.set_name)
    if upgrade is not None and upgrade.running:
        return None
    target = await session.image(session.spec.model.image)
    instances = session.store.list_instances(session.set_name)
    newest = (target.record.name, version_key(target.record.version))

    def older(ref: str) -> bool:
        name, version = parse_image_ref(ref)
        return name != newest[0] or version_key(version) < newest[1]

    return target if any(older(i.image) for i in instances) else None


def failed_generation(session: Session, generation: int) -> bool:
    """Whether an OS upgrade to ``generation`` failed (and was not rolled back): the
    controller's catch-up of an Automatic set must not push it onto the rest."""
    return any(u.generation == generation and u.result == FAULTED
               for u in session.store.os_upgrades(session.set_name))


async def upgrade(session: Session, target: Image, report: PassReport) -> OsUpgradeRecord:
    """One automatic OS upgrade run to ``target``, recorded in the history."""
    env, store, name = session.env, session.store, session.set_name
    versions = sorted({i.image for i in store.list_instances(name)})
    report.act(env, f"{name}: automatic OS upgrade {', '.join(versions)} -> {target.ref}")
    generation = _new_generation(session, target)
    run = store.add_os_upgrade(name, from_versions=versions, target=target.ref,
                               generation=generation, now=env.engine.now())
    outcome = await rolling.start_in(session)
    if outcome.status is RollingStatus.COMPLETED:
        store.end_os_upgrade(run.id, result=SUCCEEDED, rollback={}, error=None,
                             now=env.engine.now())
        return _load(env, name, run.id)
    error = outcome.error or f"the rolling upgrade ended {outcome.status.value}"
    # recorded first: from now on NAME:latest passes over this version
    store.end_os_upgrade(run.id, result=FAULTED, rollback={}, error=error, now=env.engine.now())
    report.problems.append(f"{name}: automatic OS upgrade to {target.ref} failed: {error}")
    if session.spec.upgrade_policy.automatic_os_upgrade_policy.disable_automatic_rollback:
        return _load(env, name, run.id)
    session.resolve_again()
    previous = await session.image(session.spec.model.image)
    upgraded = [i.instance_id for i in store.list_instances(name) if i.image == target.ref]
    report.act(env, f"{name}: rolling instances {upgraded} back to {previous.ref}")
    _new_generation(session, previous)
    back = await rolling.start_in(session)
    rollback = {"toVersion": previous.ref, "instanceIds": upgraded,
                "status": back.status.value, "error": back.error}
    store.end_os_upgrade(run.id, result=ROLLED_BACK if back.status is RollingStatus.COMPLETED
                         else FAULTED, rollback=rollback, error=error, now=env.engine.now())
    return _load(env, name, run.id)


def _new_generation(session: Session, image: Image) -> int:
    """A new generation of the set's unchanged model, to bring its instances to ``image``;
    instances that already run ``image`` on that model are recorded at it untouched."""
    store, name = session.store, session.set_name
    current = session.spec.model
    rec = store.update_spec(name, session.spec.to_json_dict(), new_generation=True,
                            now=session.env.engine.now())
    session.changed_spec()
    store.add_event(name, f"model generation {rec.generation} ({image.ref})",
                    now=session.env.engine.now())
    for inst in store.list_instances(name):
        if (inst.image == image.ref and inst.status == "active" and not inst.prev_generation
                and session.model(inst.model_generation) == current):
            store.update_instance(inst, model_generation=rec.generation)
    return rec.generation


def _load(env: Env, set_name: str, run_id: int) -> OsUpgradeRecord:
    return next(u for u in env.store.os_upgrades(set_name) if u.id == run_id)


def history(env: Env, set_name: str) -> list[OsUpgradeRecord]:
    """The set's automatic OS upgrade runs, newest first (NotFound for an unknown set)."""
    env.store.get_set(set_name)
    return list(reversed(env.store.os_upgrades(set_name)))
