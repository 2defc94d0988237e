"""Per-instance steps on the hypervisor: allocate, provision, power, tear down. Each is
idempotent: run twice, or after a crash half-way, it converges on the same result.

Owned here: the ``Engine`` context (hypervisor, store, registry, clock, settings), how an
instance's resources are named (``InstanceNames``), address and MAC allocation, the domain
built for an instance (``build_domain``), and the steps themselves.
Called by ``service`` (and later by the reconcile loop). Waiting for health is not here:
see ``engine.health``.

Everything an instance owns is named after its domain name ``<set>-<instanceId>``:
volumes ``<name>-os.qcow2``, ``<name>-data<lun>.qcow2``, ``<name>-seed.iso``; the DHCP
host entry carries ``name``; the domain carries ownership metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from orchestrator import cloudinit, ssh
from orchestrator.clock import Clock, iso
from orchestrator.errors import Gone, HypervisorError, OperationFailed, OrchError
from orchestrator.hypervisor.base import (
    DomainInfo,
    Hypervisor,
    NetworkInfo,
    PowerState,
    Reservation,
)
from orchestrator.hypervisor.domainxml import (
    BackingStore,
    DirectKernelBoot,
    Disk,
    Domain,
    Interface,
    Ownership,
)
from orchestrator.images import Image, Registry
from orchestrator.model import Model
from orchestrator.store import InstanceRecord, Store

GIB = 1024**3


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    pool: str = "default"
    domain_type: str = "qemu"
    shutdown_timeout: float = 60.0
    poll_interval: float = 0.5


@dataclass
class Engine:
    hv: Hypervisor
    store: Store
    registry: Registry
    clock: Clock
    settings: Settings
    log: Callable[[str], None] = field(default=lambda s: None)
    # the journal's operation the steps taken now belong to (set by ``Service.locked``)
    operation_id: int | None = None

    def now(self) -> str:
        return iso(self.clock.now())

    def open_step(self, inst: InstanceRecord, name: str) -> int | None:
        """Journal the start of one step on one instance, before it acts (None: no
        operation is being journaled). Only from the thread that owns the store."""
        if self.operation_id is None:
            return None
        return self.store.start_step(self.operation_id, set_name=inst.set_name,
                                     instance=inst.name, step=name, now=self.now())

    def close_step(self, step_id: int | None, error: BaseException | None = None) -> None:
        """Journal the end of a step: ``done``, or ``failed`` with ``error``."""
        if step_id is None:
            return
        if error is None:
            self.store.end_step(step_id, "done", now=self.now())
            return
        with contextlib.suppress(Exception):  # a dead store must not hide the cause
            self.store.end_step(step_id, "failed", error=_one_line(error), now=self.now())

    @contextlib.contextmanager
    def step(self, inst: InstanceRecord, name: str) -> Iterator[None]:
        """One journaled step around a block: a step left ``started`` names where a killed
        process stopped."""
        step_id = self.open_step(inst, name)
        try:
            yield
        except GeneratorExit:
            raise  # the coroutine is being discarded with its process: leave it started
        except BaseException as exc:
            self.close_step(step_id, exc)
            raise
        self.close_step(step_id)

    @property
    def console_dir(self) -> Path:
        return self.settings.state_dir / "console"


def _one_line(exc: BaseException) -> str:
    return exc.one_line() if isinstance(exc, OrchError) else type(exc).__name__


_P = ParamSpec("_P")
_R = TypeVar("_R")


def journaled(name: str) -> Callable[
        [Callable[Concatenate[Engine, InstanceRecord, _P], Awaitable[_R]]],
        Callable[Concatenate[Engine, InstanceRecord, _P], Awaitable[_R]]]:
    """An async per-instance step recorded in the journal as ``name`` (``Engine.step``)."""
    def wrap(fn: Callable[Concatenate[Engine, InstanceRecord, _P], Awaitable[_R]]
             ) -> Callable[Concatenate[Engine, InstanceRecord, _P], Awaitable[_R]]:
        @functools.wraps(fn)
        async def run(engine: Engine, inst: InstanceRecord, /, *args: _P.args,
                      **kwargs: _P.kwargs) -> _R:
            with engine.step(inst, name):
                return await fn(engine, inst, *args, **kwargs)
        return run
    return wrap



@dataclass(frozen=True)
class InstanceNames:
    domain: str

    def os_volume(self, serial: int) -> str:
        """OS disks are numbered: a new image or a reimage makes the next one, and the one
        before is kept until the new one proves healthy (rollback is then a swap)."""
        return f"{self.domain}-os{serial}.qcow2"

    def next_os_volume(self, current: str) -> str:
        digits = current.removeprefix(f"{self.domain}-os").removesuffix(".qcow2")
        return self.os_volume(int(digits) + 1 if digits.isdigit() else 1)

    @property
    def seed_volume(self) -> str:
        return f"{self.domain}-seed.iso"

    def data_volume(self, lun: int) -> str:
        return f"{self.domain}-data{lun}.qcow2"

    def owns_volume(self, volume: str) -> bool:
        rest = volume.removeprefix(f"{self.domain}-")
        return rest != volume and re.fullmatch(r"os\d*\.qcow2|seed\.iso|data\d+\.qcow2", rest) is not None


def instance_name(set_name: str, instance_id: int) -> str:
    return f"{set_name}-{instance_id}"


# --- allocation --------------------------------------------------------------------------
def allocate(engine: Engine, *, set_name: str, instance_id: int, model: Model, generation: int,
             image: Image) -> InstanceRecord:
    """Record a new instance (status ``creating``) with its MAC, IP and host key.

    The row is written before anything is created in libvirt (intent first), so a crash
    leaves a record that names everything to clean up or finish.
    """
    net = engine.hv.network_info(model.network)
    host_key = ssh.generate_keypair(f"{instance_name(set_name, instance_id)} host key")
    with engine.store.transaction():
        taken_ips, taken_macs = _taken(engine, model.network)
        free = _free_in(net, taken_ips)
        if not free:
            raise OperationFailed(f"network {model.network} has no free address in "
                                  f"{net.dhcp_start}-{net.dhcp_end}")
        ip = free[0]
        rec = InstanceRecord(
            set_name=set_name,
            instance_id=instance_id,
            name=instance_name(set_name, instance_id),
            status="creating",
            mac=_mac_for(ip, taken_macs),
            ip=ip,
            network=model.network,
            model_generation=generation,
            image=image.ref,
            host_key_public=host_key.public_openssh,
            host_key_private=host_key.private_openssh,
            seed_instance_id=new_seed_id(set_name, instance_id),
            protect_from_scale_in=False,
            protect_from_scale_set_actions=False,
            power_intent="running",
            health={},
            created_at=engine.now(),
            os_volume=InstanceNames(instance_name(set_name, instance_id)).os_volume(0),
        )
        engine.store.add_instance(rec)
    return rec


def new_seed_id(set_name: str, instance_id: int) -> str:
    return f"{set_name}-{instance_id}-{uuid.uuid4().hex[:12]}"


def _taken(engine: Engine, network: str) -> tuple[set[str], set[str]]:
    reservations = engine.hv.list_reservations(network)
    ips = {r.ip for r in reservations}
    # a lease held by a MAC other than the one this address would get blocks the address
    ips |= {ip for ip, mac in engine.hv.leased_addresses(network).items()
            if mac != _mac_for(ip, set())}
    macs = {r.mac.lower() for r in reservations}
    for inst in engine.store.all_instances():
        macs.add(inst.mac.lower())
        if inst.network == network:
            ips.add(inst.ip)
    return ips, macs


def _mac_for(ip: str, taken: set[str]) -> str:
    """The MAC of an address: 52:54:00 and the address's last three bytes.

    An address freed by a deleted instance stays leased in dnsmasq until the lease expires,
    and dnsmasq will not hand a leased address to another MAC (the new instance then gets
    no address at all). Tying the MAC to the address makes a reused address come back with
    the same MAC, which the old lease matches.
    """
    mac = "52:54:00:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed[1:])
    return mac if mac not in taken else _random_mac(taken)


def _random_mac(taken: set[str]) -> str:
    for _ in range(1000):
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        if mac not in taken:
            return mac
    raise OperationFailed("could not find a free MAC address")


def free_addresses(engine: Engine, network: str) -> list[str]:
    """The addresses of the network's DHCP range a new instance may get, lowest first: not
    the gateway, not reserved, not held by an instance, not leased to another MAC."""
    return _free_in(engine.hv.network_info(network), _taken(engine, network)[0])


def _free_in(net: NetworkInfo, taken: set[str]) -> list[str]:
    first = int(ipaddress.IPv4Address(net.dhcp_start))
    last = int(ipaddress.IPv4Address(net.dhcp_end))
    return [ip for ip in (str(ipaddress.IPv4Address(v)) for v in range(first, last + 1))
            if ip not in taken and ip != net.gateway]


# --- provisioning ------------------------------------------------------------------------
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


def build_domain(engine: Engine, inst: InstanceRecord, model: Model, image: Image) -> Domain:
    pool_path = Path(engine.hv.pool_info(engine.settings.pool).path)
    names = InstanceNames(inst.name)
    disks = [
        Disk(path=str(pool_path / inst.os_volume), target="vda", fmt="qcow2",
             serial="orch-os", backing=BackingStore(str(image.disk), "qcow2"))
    ]
    for index, dd in enumerate(model.data_disks):
        disks.append(Disk(path=str(pool_path / names.data_volume(dd.lun)),
                          target=f"vd{chr(ord('b') + index)}", fmt="qcow2",
                          serial=f"orch-lun{dd.lun}"))
    disks.append(Disk(path=str(pool_path / names.seed_volume), target="vdz", fmt="raw",
                      readonly=True, serial="cidata"))
    boot = None
    if image.kernel is not None:
        boot = DirectKernelBoot(
            kernel=str(image.kernel),
            initrd=str(image.initrd) if image.initrd else None,
            cmdline=image.cmdline,
        )
    return Domain(
        name=inst.name,
        domain_type=engine.settings.domain_type,
        memory_mib=model.memory_mib,
        vcpus=model.vcpus,
        disks=tuple(disks),
        interfaces=(Interface(network=inst.network, mac=inst.mac),),
        boot=boot,
        console_log=str(engine.console_dir / f"{inst.name}.log"),
        owner=Ownership(inst.set_name, inst.instance_id, inst.model_generation),
        description=f"orchestrator scale set {inst.set_name}, instance {inst.instance_id}",
    )


def provision(engine: Engine, inst: InstanceRecord, model: Model, image: Image,
              *, admin_key: str, start: bool = True) -> None:
    """Create what ``inst`` needs and boot it (unless ``start`` is false); steps already
    done are skipped, and volumes that exist (an OS disk, data disks) are kept."""
    pool = engine.settings.pool
    names = InstanceNames(inst.name)
    existing = {v.name for v in engine.hv.list_volumes(pool)}
    if inst.os_volume not in existing:
        engine.hv.create_overlay(pool, name=inst.os_volume, backing_path=str(image.disk),
                                 backing_format="qcow2",
                                 capacity_bytes=max(image.virtual_size, 1))
    for dd in model.data_disks:
        if names.data_volume(dd.lun) not in existing:
            engine.hv.create_volume(pool, name=names.data_volume(dd.lun),
                                    capacity_bytes=dd.size_gib * GIB)
    seed = cloudinit.build_seed_iso(seed_content(inst, model, admin_key=admin_key))
    engine.hv.upload_volume(pool, name=names.seed_volume, data=seed)
    engine.hv.add_reservation(inst.network, Reservation(inst.mac, inst.ip, inst.name))
    engine.console_dir.mkdir(parents=True, exist_ok=True)
    _check_not_foreign(engine, inst)
    engine.hv.define_domain(build_domain(engine, inst, model, image))
    if start:
        engine.hv.start(inst.name)


def _check_not_foreign(engine: Engine, inst: InstanceRecord) -> None:
    """Refuse to redefine a domain of the same name that orchestrator did not create."""
    if engine.hv.domain_state(inst.name) is PowerState.MISSING:
        return
    owner = engine.hv.domain_owner(inst.name)
    if owner is None or owner.set_name != inst.set_name or owner.instance_id != inst.instance_id:
        raise HypervisorError(
            f"a domain named {inst.name} exists and is not owned by scale set {inst.set_name}; "
            "it is left alone"
        )


# --- power -------------------------------------------------------------------------------
async def power_off(engine: Engine, name: str, *, graceful: bool = True,
                    timeout: float | None = None) -> bool:
    """Stop a domain: ACPI first, destroy after ``timeout``. True if it stopped gracefully."""
    state = engine.hv.domain_state(name)
    if state in (PowerState.STOPPED, PowerState.MISSING):
        return True
    if graceful and state is PowerState.RUNNING:
        engine.hv.shutdown(name)
        limit = engine.settings.shutdown_timeout if timeout is None else timeout
        deadline = engine.clock.monotonic() + limit
        while engine.clock.monotonic() < deadline:
            if engine.hv.domain_state(name) in (PowerState.STOPPED, PowerState.MISSING):
                return True
            await engine.clock.sleep(engine.settings.poll_interval)
        engine.log(f"{name}: no ACPI shutdown after {limit:.0f}s, powering off")
    engine.hv.destroy(name)
    return False


# --- teardown ----------------------------------------------------------------------------
def _attempt(problems: list[str], what: str, fn: Callable[[], None]) -> None:
    """One removal of a clean-up that goes on past failures: gone already is fine, any
    other error is noted in ``problems``."""
    try:
        fn()
    except Gone:
        pass
    except OrchError as exc:
        problems.append(f"{what}: {exc.message}")


def teardown(engine: Engine, inst: InstanceRecord) -> list[str]:
    """Remove everything ``inst`` owns in libvirt; returns the problems met (collected, so
    one failure does not leave the rest behind). Domains not owned by this instance are
    never touched."""
    problems: list[str] = []
    names = InstanceNames(inst.name)
    attempt = functools.partial(_attempt, problems)
    owner = engine.hv.domain_owner(inst.name)
    if owner is not None and owner.set_name == inst.set_name and owner.instance_id == inst.instance_id:
        attempt("destroy", lambda: engine.hv.destroy(inst.name))
        attempt("undefine", lambda: engine.hv.undefine(inst.name))
    pool = engine.settings.pool
    try:
        volumes = [v.name for v in engine.hv.list_volumes(pool) if names.owns_volume(v.name)]
    except OrchError as exc:
        problems.append(f"list volumes: {exc.message}")
        volumes = []
    for vol in volumes:
        attempt(f"delete volume {vol}", lambda vol=vol: engine.hv.delete_volume(pool, vol))  # type: ignore[misc]
    attempt("remove DHCP reservation", lambda: engine.hv.remove_reservation(
        inst.network, Reservation(inst.mac, inst.ip, inst.name)))
    console = engine.console_dir / f"{inst.name}.log"
    console.unlink(missing_ok=True)
    return problems


@dataclass(frozen=True)
class Orphans:
    """What libvirt holds for a set that the store does not know: owned domains, volumes
    and DHCP reservations of instanceIds the store has no row for."""

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


def find_orphans(engine: Engine, set_name: str, *, known: set[int], networks: set[str],
                 domains: list[DomainInfo]) -> Orphans:
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
    volumes = tuple(v.name for v in engine.hv.list_volumes(engine.settings.pool) if orphan_id(
        re.fullmatch(prefix + r"-(\d+)-(?:os\d*\.qcow2|seed\.iso|data\d+\.qcow2)", v.name)))
    reservations = tuple((net, r) for net in sorted(networks)
                         for r in engine.hv.list_reservations(net)
                         if orphan_id(re.fullmatch(prefix + r"-(\d+)", r.name)))
    return Orphans(owned, volumes, reservations)


def remove_orphans(engine: Engine, orphans: Orphans) -> list[str]:
    """Remove what ``find_orphans`` found; returns the problems met (collected)."""
    problems: list[str] = []
    attempt = functools.partial(_attempt, problems)
    pool = engine.settings.pool
    for name in orphans.domains:
        attempt(f"domain {name}", lambda name=name: engine.hv.destroy(name))  # type: ignore[misc]
        attempt(f"domain {name}", lambda name=name: engine.hv.undefine(name))  # type: ignore[misc]
    for vol in orphans.volumes:
        attempt(f"volume {vol}", lambda vol=vol: engine.hv.delete_volume(pool, vol))  # type: ignore[misc]
    for net, res in orphans.reservations:
        attempt(f"reservation {res.name}",
                lambda net=net, res=res: engine.hv.remove_reservation(net, res))  # type: ignore[misc]
    return problems


# --- model changes, rollback, reimage --------------------------------------------------------
def _fresh_overlay(engine: Engine, name: str, image: Image) -> None:
    """A new overlay on ``image``; one left by an interrupted attempt is replaced."""
    pool = engine.settings.pool
    if any(v.name == name for v in engine.hv.list_volumes(pool)):
        engine.hv.delete_volume(pool, name)
    engine.hv.create_overlay(pool, name=name, backing_path=str(image.disk), backing_format="qcow2",
                             capacity_bytes=max(image.virtual_size, 1))


def _ensure_data_disks(engine: Engine, inst: InstanceRecord, model: Model) -> None:
    """Create the data disks the model names and the instance lacks; existing ones are kept
    (a lun dropped from the model is detached, its volume kept until the instance goes)."""
    pool = engine.settings.pool
    names = InstanceNames(inst.name)
    existing = {v.name for v in engine.hv.list_volumes(pool)}
    for dd in model.data_disks:
        if names.data_volume(dd.lun) not in existing:
            engine.hv.create_volume(pool, name=names.data_volume(dd.lun),
                                    capacity_bytes=dd.size_gib * GIB)


def _drop_volume(engine: Engine, name: str) -> None:
    if name:
        engine.hv.delete_volume(engine.settings.pool, name)


@journaled("apply-model")
async def apply_model(engine: Engine, inst: InstanceRecord, *, model: Model, generation: int,
                      image: Image) -> InstanceRecord:
    """Bring one instance to ``model`` in place: same instanceId, name, MAC, IP, data disks.

    Graceful power-off (destroy after the shutdown timeout); a new OS overlay when the image
    changes, the old one kept for rollback until ``commit_model``; the domain redefined and
    started. Returns the updated record; waiting for health is the caller's.
    """
    _check_not_foreign(engine, inst)
    await power_off(engine, inst.name)
    changes = _model_changes(inst, generation=generation, image=image)
    # an OS disk kept from an earlier change that was never committed is of no use now
    _drop_volume(engine, inst.prev_os_volume)
    if changes["os_volume"] != inst.os_volume:
        _fresh_overlay(engine, str(changes["os_volume"]), image)
    _ensure_data_disks(engine, inst, model)
    # Recorded only once the domain runs the new model: after a crash before that, the
    # instance still shows its old generation, so the next upgrade redoes it (every step
    # above is safe to repeat) instead of skipping a half-done instance.
    candidate = dataclasses.replace(inst, **changes)  # type: ignore[arg-type]
    engine.hv.define_domain(build_domain(engine, candidate, model, image))
    engine.hv.start(inst.name)
    return engine.store.update_instance(inst, **changes)


def _model_changes(inst: InstanceRecord, *, generation: int, image: Image) -> dict[str, object]:
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


def adopt_generation(engine: Engine, inst: InstanceRecord, *, generation: int,
                     image: Image) -> InstanceRecord | None:
    """The domain says ``generation`` where the store says another: a process was killed
    between redefining the domain and recording it (``apply_model``, ``rollback``).
    Libvirt's word is taken: the store records what ``apply_model`` would have, uncommitted,
    so the kept OS disk still allows a rollback. None if the disks that state needs are
    not there (then nothing is changed)."""
    changes = _model_changes(inst, generation=generation, image=image)
    present = {v.name for v in engine.hv.list_volumes(engine.settings.pool)}
    needed = {str(changes["os_volume"]), str(changes["prev_os_volume"])} - {""}
    if not needed <= present:
        return None
    return engine.store.update_instance(inst, **changes)


def commit_model(engine: Engine, inst: InstanceRecord) -> InstanceRecord:
    """The instance proved healthy on its new model: the previous OS disk can go."""
    with engine.step(inst, "commit-model"):
        _drop_volume(engine, inst.prev_os_volume)
        return engine.store.update_instance(inst, prev_os_volume="", prev_generation=0,
                                            prev_image="")


@journaled("rollback")
async def rollback(engine: Engine, inst: InstanceRecord, *, model: Model,
                   image: Image) -> InstanceRecord:
    """Return an instance to its previous generation (``model``/``image`` are that
    generation's): the kept OS disk is swapped back in, the failed one deleted."""
    if not inst.prev_generation:
        raise OperationFailed(f"{inst.name} has no previous model to return to")
    await power_off(engine, inst.name)
    failed_volume = inst.os_volume if inst.prev_os_volume else ""
    inst = engine.store.update_instance(
        inst, model_generation=inst.prev_generation, image=inst.prev_image,
        os_volume=inst.prev_os_volume or inst.os_volume, prev_os_volume="",
        prev_generation=0, prev_image="", health={})
    engine.hv.define_domain(build_domain(engine, inst, model, image))
    _drop_volume(engine, failed_volume)
    engine.hv.start(inst.name)
    return inst


REIMAGING = "reimaging"
REIMAGING_ALL_DISKS = "reimaging-all-disks"


async def reimage(engine: Engine, inst: InstanceRecord, *, model: Model, profile: Model,
                  image: Image, admin_key: str, all_disks: bool = False) -> InstanceRecord:
    """Restore the OS disk to ``image``: a fresh overlay, a fresh cloud-init instance-id and
    host key (from ``profile``, the latest model's OS profile); data disks kept unless
    ``all_disks``. ``model`` is the instance's own generation (hardware).

    The new identity is recorded first, with status ``reimaging``: a reimage interrupted at
    any point is finished by ``finish_reimage`` (the reconciler does so), never half-done.
    """
    _check_not_foreign(engine, inst)
    _drop_volume(engine, inst.prev_os_volume)  # an uncommitted earlier disk is of no use now
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
    await power_off(engine, inst.name)
    names = InstanceNames(inst.name)
    pool = engine.settings.pool
    _fresh_overlay(engine, inst.os_volume, image)
    if inst.status == REIMAGING_ALL_DISKS:
        for vol in engine.hv.list_volumes(pool):
            if vol.name.startswith(f"{inst.name}-data") and names.owns_volume(vol.name):
                engine.hv.delete_volume(pool, vol.name)
    _ensure_data_disks(engine, inst, model)
    seed = cloudinit.build_seed_iso(seed_content(inst, profile, admin_key=admin_key))
    engine.hv.upload_volume(pool, name=names.seed_volume, data=seed)
    engine.hv.define_domain(build_domain(engine, inst, model, image))
    _drop_volume(engine, inst.prev_os_volume)
    inst = engine.store.update_instance(inst, status="active", prev_os_volume="")
    engine.hv.start(inst.name)
    return inst
