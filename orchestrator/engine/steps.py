"""Per-instance steps on the hypervisor: provision, apply a model, roll back, reimage,
power off, tear down, and find what no instance owns. Each is idempotent: run twice, or
after a crash half-way, it converges on the same result. Every hypervisor call goes
through ``Engine.io`` (off the event loop).

Owned here: the domain built for an instance (``build_domain``), the seed it gets
(``seed_content``), the steps themselves, and ``Orphans``. Waiting for health is not here
(``usecases.watch``), nor the order of steps of a use case (``usecases``).

Called by: dryrun.simworld, usecases.controller, usecases.recovery, usecases.removal,
usecases.rollout, usecases.sets
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from orchestrator import cloudinit, ssh
from orchestrator.engine import copies
from orchestrator.engine.addresses import VOLUME_KINDS, InstanceNames, new_seed_id
from orchestrator.engine.context import Engine, Where, journaled
from orchestrator.engine.copies import HostImage
from orchestrator.errors import Gone, HypervisorError, OperationFailed, OrchError
from orchestrator.hypervisor.base import DomainInfo, PowerState, Reservation
from orchestrator.hypervisor.domainxml import (
    BackingStore,
    DirectKernelBoot,
    Disk,
    Domain,
    Interface,
    Ownership,
)
from orchestrator.images import Image
from orchestrator.model import Model
from orchestrator.store import InstanceRecord

GIB = 1024**3
REIMAGING = "reimaging"
REIMAGING_ALL_DISKS = "reimaging-all-disks"


# --- the domain of an instance -------------------------------------------------------------
def seed_content(inst: InstanceRecord, model: Model, *, admin_key: str) -> cloudinit.SeedContent:
    keys = [admin_key] + ([model.ssh_public_key] if model.ssh_public_key else [])
    return cloudinit.SeedContent(
        instance_id=inst.seed_instance_id,
        hostname=inst.name,
        authorized_keys=tuple(keys),
        host_key_private=inst.host_key_private,
        host_key_public=inst.host_key_public,
        custom_data=model.custom_data,
    )


def build_domain(engine: Engine, inst: InstanceRecord, model: Model, image: Image, *,
                 base: HostImage, pool_path: Path) -> Domain:
    """The domain of ``inst``: its disks in ``pool_path``, its OS disk on ``base`` (the
    image's copy on the instance's host)."""
    names = InstanceNames(inst.name)
    disks = [
        Disk(path=str(pool_path / inst.os_volume), target="vda", fmt="qcow2",
             serial="orch-os", backing=BackingStore(base.disk, "qcow2"))
    ]
    for index, dd in enumerate(model.data_disks):
        disks.append(Disk(path=str(pool_path / names.data_volume(dd.lun)),
                          target=f"vd{chr(ord('b') + index)}", fmt="qcow2",
                          serial=f"orch-lun{dd.lun}"))
    disks.append(Disk(path=str(pool_path / names.seed_volume), target="vdz", fmt="raw",
                      readonly=True, serial="cidata"))
    boot = None
    if base.kernel is not None:
        boot = DirectKernelBoot(kernel=base.kernel, initrd=base.initrd, cmdline=image.cmdline)
    return Domain(
        name=inst.name,
        domain_type=engine.settings.domain_type,
        memory_mib=model.memory_mib,
        vcpus=model.vcpus,
        disks=tuple(disks),
        interfaces=(Interface(network=inst.network, mac=inst.mac),),
        boot=boot,
        console_log=str(pool_path / names.console_volume),
        owner=Ownership(inst.set_name, inst.instance_id, inst.model_generation),
        description=f"orchestrator scale set {inst.set_name}, instance {inst.instance_id}",
    )


async def pool_path(engine: Engine, w: Where) -> Path:
    return Path((await engine.io(w.hv.pool_info, w.pool)).path)


async def _define(engine: Engine, inst: InstanceRecord, model: Model, image: Image) -> None:
    w = engine.at(inst.host)
    domain = build_domain(engine, inst, model, image, base=await copies.ensure(engine, w, image),
                          pool_path=await pool_path(engine, w))
    await engine.io(w.hv.define_domain, domain)


async def _volumes(engine: Engine, w: Where) -> set[str]:
    return {v.name for v in await engine.io(w.hv.list_volumes, w.pool)}


async def _has_volume(engine: Engine, w: Where, name: str) -> bool:
    # one lookup, not a listing: a step of one instance must not cost the whole pool
    return await engine.io(w.hv.find_volume, w.pool, name) is not None


# --- provisioning ------------------------------------------------------------------------
async def provision(engine: Engine, inst: InstanceRecord, model: Model, image: Image,
                    *, admin_key: str, start: bool = True) -> None:
    """Create what ``inst`` needs and boot it (unless ``start`` is false); steps already
    done are skipped, and volumes that exist (an OS disk, data disks) are kept."""
    w = engine.at(inst.host)
    hv, pool = w.hv, w.pool
    names = InstanceNames(inst.name)
    if not await _has_volume(engine, w, inst.os_volume):
        base = await copies.ensure(engine, w, image)
        await engine.io(hv.create_overlay, pool, name=inst.os_volume,
                        backing_path=base.disk, backing_format="qcow2",
                        capacity_bytes=max(image.virtual_size, 1))
    for dd in model.data_disks:
        if not await _has_volume(engine, w, names.data_volume(dd.lun)):
            await engine.io(hv.create_volume, pool, name=names.data_volume(dd.lun),
                            capacity_bytes=dd.size_gib * GIB)
    seed = cloudinit.build_seed_iso(seed_content(inst, model, admin_key=admin_key))
    await engine.io(hv.upload_volume, pool, name=names.seed_volume, data=seed)
    await engine.io(hv.add_reservation, inst.network, Reservation(inst.mac, inst.ip, inst.name))
    await _check_not_foreign(engine, inst)
    await _define(engine, inst, model, image)
    if start:
        await engine.io(hv.start, inst.name)


async def _check_not_foreign(engine: Engine, inst: InstanceRecord) -> None:
    """Refuse to redefine a domain of the same name that orchestrator did not create."""
    hv = engine.at(inst.host).hv
    if await engine.io(hv.domain_state, inst.name) is PowerState.MISSING:
        return
    owner = await engine.io(hv.domain_owner, inst.name)
    if owner is None or owner.set_name != inst.set_name or owner.instance_id != inst.instance_id:
        raise HypervisorError(
            f"a domain named {inst.name} exists and is not owned by scale set {inst.set_name}; "
            "it is left alone"
        )


# --- power -------------------------------------------------------------------------------
async def power_off(engine: Engine, inst: InstanceRecord, *, graceful: bool = True,
                    timeout: float | None = None) -> bool:
    """Stop a domain: ACPI first, destroy after ``timeout``. True if it stopped gracefully."""
    hv, name = engine.at(inst.host).hv, inst.name
    state = await engine.io(hv.domain_state, name)
    if state in (PowerState.STOPPED, PowerState.MISSING):
        return True
    if graceful and state is PowerState.RUNNING:
        await engine.io(hv.shutdown, name)
        limit = engine.settings.shutdown_timeout if timeout is None else timeout
        deadline = engine.clock.monotonic() + limit
        while engine.clock.monotonic() < deadline:
            if await engine.io(hv.domain_state, name) in (PowerState.STOPPED, PowerState.MISSING):
                return True
            await engine.clock.sleep(engine.settings.poll_interval)
        engine.log(f"{name}: no ACPI shutdown after {limit:.0f}s, powering off")
    await engine.io(hv.destroy, name)
    return False


async def start(engine: Engine, inst: InstanceRecord) -> None:
    await engine.io(engine.at(inst.host).hv.start, inst.name)


# --- teardown ----------------------------------------------------------------------------
async def _attempt(problems: list[str], what: str, call: Callable[[], Awaitable[object]]) -> None:
    """One removal of a clean-up that goes on past failures: gone already is fine, any
    other error is noted in ``problems``."""
    try:
        await call()
    except Gone:
        pass
    except OrchError as exc:
        problems.append(f"{what}: {exc.message}")


async def teardown(engine: Engine, inst: InstanceRecord) -> list[str]:
    """Remove everything ``inst`` owns in libvirt; returns the problems met (collected, so
    one failure does not leave the rest behind). Domains not owned by this instance are
    never touched."""
    w = engine.at(inst.host)
    hv, pool = w.hv, w.pool
    problems: list[str] = []
    names = InstanceNames(inst.name)
    owner = await engine.io(hv.domain_owner, inst.name)
    if owner is not None and owner.set_name == inst.set_name and owner.instance_id == inst.instance_id:
        await _attempt(problems, "destroy", lambda: engine.io(hv.destroy, inst.name))
        await _attempt(problems, "undefine", lambda: engine.io(hv.undefine, inst.name))
    try:
        volumes = [v for v in await _volumes(engine, w) if names.owns_volume(v)]
    except OrchError as exc:
        problems.append(f"list volumes: {exc.message}")
        volumes = []
    for vol in sorted(volumes):
        await _attempt(problems, f"delete volume {vol}",
                       lambda vol=vol: engine.io(hv.delete_volume, pool, vol))  # type: ignore[misc]
    await _attempt(problems, "remove DHCP reservation", lambda: engine.io(
        hv.remove_reservation, inst.network, Reservation(inst.mac, inst.ip, inst.name)))
    return problems


@dataclass(frozen=True)
class Orphans:
    """What one host's libvirt holds for a set that the store does not know there: owned
    domains, volumes and DHCP reservations of instances the store has no row for on it."""

    host: str
    domains: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    reservations: tuple[tuple[str, Reservation], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.domains or self.volumes or self.reservations)

    def describe(self) -> str:
        parts = [f"{len(things)} {what}" for what, things in (
            ("domain(s)", self.domains), ("volume(s)", self.volumes),
            ("DHCP reservation(s)", self.reservations)) if things]
        return ", ".join(parts)


async def find_orphans(engine: Engine, w: Where, set_name: str, *, known: set[int],
                       networks: set[str], domains: list[DomainInfo]) -> Orphans:
    """Objects of ``set_name`` in libvirt whose instanceId is not in ``known``: a domain
    (of ``domains``, as listed by the caller) by its ownership metadata, a volume or
    reservation by a name only this set's instances get (``<set>-<id>-os<k>.qcow2``
    cannot belong to set ``<set>-<id>``)."""
    def orphan_id(match: re.Match[str] | None) -> bool:
        return match is not None and int(match.group(1)) not in known

    prefix = re.escape(set_name)
    owned = tuple(d.name for d in domains
                  if d.owner is not None and d.owner.set_name == set_name
                  and d.owner.instance_id not in known)
    volumes = tuple(sorted(v for v in await _volumes(engine, w) if orphan_id(
        re.fullmatch(prefix + rf"-(\d+)-(?:{VOLUME_KINDS})", v))))
    reservations: list[tuple[str, Reservation]] = []
    for net in sorted(networks):
        reservations.extend((net, r) for r in await engine.io(w.hv.list_reservations, net)
                            if orphan_id(re.fullmatch(prefix + r"-(\d+)", r.name)))
    return Orphans(w.name, owned, volumes, tuple(reservations))


async def remove_orphans(engine: Engine, orphans: Orphans) -> list[str]:
    """Remove what ``find_orphans`` found; returns the problems met (collected)."""
    w = engine.at(orphans.host)
    hv, pool = w.hv, w.pool
    problems: list[str] = []
    for name in orphans.domains:
        await _attempt(problems, f"domain {name}", lambda name=name: engine.io(hv.destroy, name))  # type: ignore[misc]
        await _attempt(problems, f"domain {name}", lambda name=name: engine.io(hv.undefine, name))  # type: ignore[misc]
    for vol in orphans.volumes:
        await _attempt(problems, f"volume {vol}",
                       lambda vol=vol: engine.io(hv.delete_volume, pool, vol))  # type: ignore[misc]
    for net, res in orphans.reservations:
        await _attempt(problems, f"reservation {res.name}",
                       lambda net=net, res=res: engine.io(hv.remove_reservation, net, res))  # type: ignore[misc]
    return problems


# --- model changes, rollback, reimage --------------------------------------------------------
async def _fresh_overlay(engine: Engine, w: Where, name: str, image: Image) -> None:
    """A new overlay on ``image``; one left by an interrupted attempt is replaced."""
    hv, pool = w.hv, w.pool
    base = await copies.ensure(engine, w, image)
    if await _has_volume(engine, w, name):
        await engine.io(hv.delete_volume, pool, name)
    await engine.io(hv.create_overlay, pool, name=name, backing_path=base.disk,
                    backing_format="qcow2", capacity_bytes=max(image.virtual_size, 1))


async def _ensure_data_disks(engine: Engine, inst: InstanceRecord, model: Model) -> None:
    """Create the data disks the model names and the instance lacks; existing ones are kept
    (a lun dropped from the model is detached, its volume kept until the instance goes)."""
    w = engine.at(inst.host)
    names = InstanceNames(inst.name)
    for dd in model.data_disks:
        if not await _has_volume(engine, w, names.data_volume(dd.lun)):
            await engine.io(w.hv.create_volume, w.pool,
                            name=names.data_volume(dd.lun), capacity_bytes=dd.size_gib * GIB)


async def _drop_volume(engine: Engine, inst: InstanceRecord, name: str) -> None:
    if name:
        w = engine.at(inst.host)
        await engine.io(w.hv.delete_volume, w.pool, name)


@journaled("apply-model")
async def apply_model(engine: Engine, inst: InstanceRecord, *, model: Model, generation: int,
                      image: Image) -> InstanceRecord:
    """Bring one instance to ``model`` in place: same instanceId, name, MAC, IP, data disks.

    Graceful power-off (destroy after the shutdown timeout); a new OS overlay when the image
    changes, the old one kept for rollback until ``commit_model``; the domain redefined and
    started. Returns the updated record; waiting for health is the caller's.
    """
    await _check_not_foreign(engine, inst)
    await power_off(engine, inst)
    changes = model_changes(inst, generation=generation, image=image)
    # an OS disk kept from an earlier change that was never committed is of no use now
    await _drop_volume(engine, inst, inst.prev_os_volume)
    if changes["os_volume"] != inst.os_volume:
        await _fresh_overlay(engine, engine.at(inst.host), str(changes["os_volume"]), image)
    await _ensure_data_disks(engine, inst, model)
    # Recorded only once the domain runs the new model: after a crash before that, the
    # instance still shows its old generation, so the next upgrade redoes it (every step
    # above is safe to repeat) instead of skipping a half-done instance.
    candidate = dataclasses.replace(inst, **changes)  # type: ignore[arg-type]
    await _define(engine, candidate, model, image)
    await start(engine, inst)
    return engine.store.update_instance(inst, **changes)


def model_changes(inst: InstanceRecord, *, generation: int, image: Image) -> dict[str, object]:
    """What ``apply_model`` records of an instance brought to ``generation``: a new image
    gets the next OS disk, the current one kept for rollback."""
    changes: dict[str, object] = {
        "prev_generation": inst.model_generation, "prev_image": inst.image,
        "model_generation": generation, "image": image.ref, "prev_os_volume": "",
        "os_volume": inst.os_volume,
        # booted anew: the health of the previous model says nothing of this one
        "health": {},
    }
    if image.ref != inst.image:
        changes.update(os_volume=InstanceNames(inst.name).next_os_volume(inst.os_volume),
                       prev_os_volume=inst.os_volume)
    return changes


async def adopt_generation(engine: Engine, inst: InstanceRecord, *, generation: int,
                           image: Image) -> InstanceRecord | None:
    """The domain says ``generation`` where the store says another: a process was killed
    between redefining the domain and recording it (``apply_model``, ``rollback``).
    Libvirt's word is taken: the store records what ``apply_model`` would have, uncommitted,
    so the kept OS disk still allows a rollback. None if the disks that state needs are
    not there (then nothing is changed)."""
    changes = model_changes(inst, generation=generation, image=image)
    needed = {str(changes["os_volume"]), str(changes["prev_os_volume"])} - {""}
    w = engine.at(inst.host)
    if not all([await _has_volume(engine, w, name) for name in sorted(needed)]):
        return None
    return engine.store.update_instance(inst, **changes)


async def commit_model(engine: Engine, inst: InstanceRecord) -> InstanceRecord:
    """The instance proved healthy on its new model: the previous OS disk can go."""
    with engine.step(inst, "commit-model"):
        await _drop_volume(engine, inst, inst.prev_os_volume)
        return engine.store.update_instance(inst, prev_os_volume="", prev_generation=0,
                                            prev_image="")


@journaled("rollback")
async def rollback(engine: Engine, inst: InstanceRecord, *, model: Model,
                   image: Image) -> InstanceRecord:
    """Return an instance to its previous generation (``model``/``image`` are that
    generation's): the kept OS disk is swapped back in, the failed one deleted."""
    if not inst.prev_generation:
        raise OperationFailed(f"{inst.name} has no previous model to return to")
    await power_off(engine, inst)
    failed_volume = inst.os_volume if inst.prev_os_volume else ""
    inst = engine.store.update_instance(
        inst, model_generation=inst.prev_generation, image=inst.prev_image,
        os_volume=inst.prev_os_volume or inst.os_volume, prev_os_volume="",
        prev_generation=0, prev_image="", health={})
    await _define(engine, inst, model, image)
    await _drop_volume(engine, inst, failed_volume)
    await start(engine, inst)
    return inst


async def reimage(engine: Engine, inst: InstanceRecord, *, model: Model, profile: Model,
                  image: Image, admin_key: str, all_disks: bool = False) -> InstanceRecord:
    """Restore the OS disk to ``image``: a fresh overlay, a fresh cloud-init instance-id and
    host key (from ``profile``, the latest model's OS profile); data disks kept unless
    ``all_disks``. ``model`` is the instance's own generation (hardware).

    The new identity is recorded first, with status ``reimaging``: a reimage interrupted at
    any point is finished by ``finish_reimage`` (recovery does so), never half-done.
    """
    await _check_not_foreign(engine, inst)
    await _drop_volume(engine, inst, inst.prev_os_volume)  # an uncommitted earlier disk: no use now
    host_key = ssh.generate_keypair(f"{inst.name} host key")
    inst = engine.store.update_instance(
        inst, status=REIMAGING_ALL_DISKS if all_disks else REIMAGING,
        os_volume=InstanceNames(inst.name).next_os_volume(inst.os_volume),
        prev_os_volume=inst.os_volume, prev_generation=0, prev_image="",
        host_key_public=host_key.public_openssh, host_key_private=host_key.private_openssh,
        seed_instance_id=new_seed_id(inst.set_name, inst.instance_id), health={})
    return await finish_reimage(engine, inst, model=model, profile=profile, image=image,
                                admin_key=admin_key)


@journaled("reimage")
async def finish_reimage(engine: Engine, inst: InstanceRecord, *, model: Model, profile: Model,
                         image: Image, admin_key: str) -> InstanceRecord:
    """Carry out the reimage recorded on ``inst``; every step is safe to repeat."""
    w = engine.at(inst.host)
    hv, pool = w.hv, w.pool
    await power_off(engine, inst)
    names = InstanceNames(inst.name)
    await _fresh_overlay(engine, w, inst.os_volume, image)
    if inst.status == REIMAGING_ALL_DISKS:
        for vol in sorted(await _volumes(engine, w)):
            if vol.startswith(f"{inst.name}-data") and names.owns_volume(vol):
                await engine.io(hv.delete_volume, pool, vol)
    await _ensure_data_disks(engine, inst, model)
    seed = cloudinit.build_seed_iso(seed_content(inst, profile, admin_key=admin_key))
    await engine.io(hv.upload_volume, pool, name=names.seed_volume, data=seed)
    await _define(engine, inst, model, image)
    await _drop_volume(engine, inst, inst.prev_os_volume)
    inst = engine.store.update_instance(inst, status="active", prev_os_volume="")
    await start(engine, inst)
    return inst
