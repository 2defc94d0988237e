"""A simulated copy of a scale set's world, for dry runs: the real upgrade code acts on it in
fake time and nothing real is touched.

Owned here: ``SimWorld`` and ``build_world`` (a temporary copy of the store made with
sqlite3's backup API; a ``FakeHypervisor`` on a ``FakeClock`` holding the set's domains,
volumes and DHCP reservations, running or stopped as libvirt shows them now; the pool's free
bytes, the memory for new guests and the network's reservations and leases of the real host;
a ``FakeProber`` that keeps
the instances unhealthy now unhealthy), what is read of the real host (``Observed``,
``observe``: read-only calls only) and the boot and shutdown times assumed (``Timings``,
``measure_timings``: this set's stored boot-to-Healthy times, else stated defaults).
Built from ``hypervisor.fake``, ``engine.simulate`` and ``clock.FakeClock`` (the fakes the
unit tests use), with the real use cases on top (an ``Env`` whose blocking calls run inline).

Called by: dryrun.plan
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.clock import FakeClock
from orchestrator.engine import copies
from orchestrator.engine.addresses import InstanceNames
from orchestrator.engine.context import Engine, Settings, inline
from orchestrator.engine.copies import HostImage
from orchestrator.engine.health import HealthState, record_from_json
from orchestrator.engine.hosts import LOCAL, Fleet
from orchestrator.engine.simulate import FakeProber
from orchestrator.engine.steps import GIB, build_domain
from orchestrator.errors import Gone, HypervisorError, NotFound
from orchestrator.hypervisor.base import (
    HostInfo,
    Hypervisor,
    NetworkInfo,
    PoolInfo,
    PowerState,
    Reservation,
)
from orchestrator.hypervisor.fake import DEFAULT_HOST, FakeHypervisor
from orchestrator.images import Image, Registry
from orchestrator.model import Model, validate
from orchestrator.store import InstanceRecord, Store
from orchestrator.usecases import placement
from orchestrator.usecases.session import Env

# Measured on a 2-core TCG host (docs/architecture.md): the tiny image to SSH-ready under TCG, and
# its ACPI shutdown until the domain is gone.
DEFAULT_BOOT_SECONDS = 6.5
DEFAULT_SHUTDOWN_SECONDS = 1.5
# A booting instance is probed every second (``engine.health``): a measured boot-to-Healthy
# time holds on average half a second of waiting for the next probe, which the simulation's
# own probing adds again.
_PROBE_LAG = 0.5
# The simulated pool (and memory) starts this large; once the set's volumes are in it (and
# its domains run), it is cut so that exactly the real pool's free bytes (the real host's
# memory for new guests) remain.
_ROOMY = 2**62
_ROOMY_HOST = dataclasses.replace(DEFAULT_HOST, memory_bytes_total=_ROOMY,
                                  memory_bytes_free=_ROOMY, memory_bytes_available=_ROOMY)


# --- what is assumed -------------------------------------------------------------------------
@dataclass(frozen=True)
class Timings:
    """The boot and shutdown times the simulated guests take."""

    boot_seconds: float = DEFAULT_BOOT_SECONDS
    shutdown_seconds: float = DEFAULT_SHUTDOWN_SECONDS
    boot_samples: int = 0  # instances the boot time was measured on (0: the default)

    @property
    def guest_boot_seconds(self) -> float:
        """How long a simulated guest takes to answer, so that its simulated boot-to-Healthy
        time (probing included) is the measured one; the default is a boot-to-ready time."""
        if self.boot_samples:
            return max(0.0, self.boot_seconds - _PROBE_LAG)
        return self.boot_seconds

    def summary(self) -> str:
        boot = (f"boot {self.boot_seconds:.1f} s measured on {self.boot_samples} instance"
                f"{'s' if self.boot_samples != 1 else ''}" if self.boot_samples
                else f"boot {self.boot_seconds:.1f} s (default)")
        return f"predicted with {boot}, shutdown {self.shutdown_seconds:.1f} s (default)"

    def as_dict(self) -> dict[str, Any]:
        return {
            "bootSeconds": round(self.boot_seconds, 2),
            "bootSource": (f"measured: median boot-to-Healthy time of {self.boot_samples} "
                           "instance(s) of the set, from their health records"
                           if self.boot_samples else
                           "default: no instance of the set has a measured boot-to-Healthy "
                           "time"),
            "guestBootSeconds": round(self.guest_boot_seconds, 2),
            "shutdownSeconds": round(self.shutdown_seconds, 2),
            "shutdownSource": "default: ACPI shutdown of the tiny image; not measured per set",
            "summary": self.summary(),
        }


def measure_timings(instances: Sequence[InstanceRecord], *, grace_seconds: float) -> Timings:
    """The median boot-to-Healthy time (``bootedAt`` → ``changedAt`` of a Healthy record) of
    ``instances``; a time beyond the grace period is not a boot (the instance was Healthy,
    then not, then Healthy again). None measured: the default."""
    samples: list[float] = []
    clock = FakeClock()  # only differences of times are used: any clock reads them alike
    for inst in instances:
        health = inst.health
        if health.get("state") != HealthState.HEALTHY.value:
            continue
        record = record_from_json(health, clock)
        if record.changed_at is None or not health.get("bootedAt"):
            continue
        if 0 < record.changed_at - record.booted_at <= grace_seconds:
            samples.append(record.changed_at - record.booted_at)
    if not samples:
        return Timings()
    return Timings(boot_seconds=statistics.median(samples), boot_samples=len(samples))


# --- what is read of the real host -------------------------------------------------------------
@dataclass(frozen=True)
class Observed:
    """The real host now, as far as a simulated upgrade depends on it."""

    power: dict[str, PowerState]  # every domain libvirt has, by name
    host: HostInfo
    pool: PoolInfo
    network: NetworkInfo
    reservations: list[Reservation]
    leases: dict[str, str]


def observe(hv: Hypervisor, *, pool: str, network: str) -> Observed:
    """Read the real host: which domains run, its memory, the pool's free bytes, the
    network's addresses. Only read-only verbs of the ``Hypervisor`` protocol are called."""
    return Observed(
        power={d.name: d.state for d in hv.list_domains()},
        host=hv.host_info(),
        pool=hv.pool_info(pool),
        network=hv.network_info(network),
        reservations=hv.list_reservations(network),
        leases=hv.leased_addresses(network),
    )


# --- the simulated world -----------------------------------------------------------------------
@dataclass(frozen=True)
class ObservedHost:
    """One host of the real set-up as the simulation copies it (None: it did not answer)."""

    name: str
    uri: str
    observed: Observed | None


async def observe_hosts(env: Env, *, network: str) -> list[ObservedHost]:
    """Every host of the real controller, read with read-only calls only."""
    seen, unreachable = await placement.ask_hosts(env, lambda w: env.engine.io(
        observe, w.hv, pool=w.pool, network=w.host.network_for(network)))
    return [*(ObservedHost(w.name, w.host.uri, observed) for w, observed in seen),
            *(ObservedHost(w.name, w.host.uri, None) for w in env.engine.hosts()
              if w.name in unreachable)]


@dataclass
class SimWorld:
    clock: FakeClock
    hv: FakeHypervisor  # the implicit host's
    store: Store
    prober: FakeProber
    env: Env
    log: list[str] = field(default_factory=list)
    hosts: dict[str, FakeHypervisor] = field(default_factory=dict)  # by host name

    def close(self) -> None:
        self.store.close()


def _bare_host(clock: FakeClock, directory: Path, *, pool: str, networks: Sequence[str],
               uri: str) -> FakeHypervisor:
    """A roomy empty host with the pool and networks named: for the checks an update makes
    before it acts (the real room is judged by the simulation proper)."""
    return FakeHypervisor(clock=clock, uri=uri, host=_ROOMY_HOST, pools=[PoolInfo(
        pool, str(directory / "pool"), _ROOMY, _ROOMY, True)], networks=[NetworkInfo(
            name, f"sim{k}", "172.31.0.1", 16, "172.31.0.2", "172.31.255.254", True)
            for k, name in enumerate(dict.fromkeys(networks))])


def _observed_host(clock: FakeClock, timings: Timings, host: ObservedHost) -> FakeHypervisor:
    if host.observed is None:
        hv = FakeHypervisor(clock=clock, uri=host.uri)
        hv.set_unavailable()
        return hv
    pool = host.observed.pool
    return FakeHypervisor(clock=clock, boot_seconds=timings.guest_boot_seconds,
                          shutdown_seconds=timings.shutdown_seconds, uri=host.uri,
                          host=_ROOMY_HOST, networks=[host.observed.network],
                          pools=[PoolInfo(pool.name, pool.path, _ROOMY, _ROOMY, pool.active)])


def build_world(source: Store, directory: Path, *, set_name: str, settings: Settings,
                now: float, timings: Timings, observed: Sequence[ObservedHost] | None,
                network: str = "default",
                progress: Callable[[str], None] = lambda line: None) -> SimWorld:
    """A simulated world in ``directory`` (new; its state dir), with a copy of ``source``.

    With ``observed``, a fake hypervisor per host holds the set's instances as that host shows
    them (see the module docstring), and the fake clock is moved past their boot. Without
    it, every host is empty and roomy, with the pool and the model's ``network``: enough for
    the checks an update makes before it acts.
    """
    directory.mkdir(mode=0o700)
    source.backup_to(directory / "orchestrator.db")
    clock = FakeClock(start=now)
    store = Store(directory / "orchestrator.db", durable=False)
    fakes: dict[str, FakeHypervisor] = {}
    if observed is None:
        for rec in store.list_hosts():
            fakes[rec.name] = _bare_host(clock, directory, pool=rec.pool, uri=rec.uri,
                                         networks=[rec.network])
        if LOCAL not in fakes:
            fakes[LOCAL] = _bare_host(clock, directory, pool=settings.pool, uri="fake:///",
                                      networks=[network, "default"])
    else:
        for host in observed:
            fakes[host.name] = _observed_host(clock, timings, host)
    hv = fakes.get(LOCAL) or FakeHypervisor(clock=clock)
    by_uri = {f.uri: f for f in fakes.values()}
    log: list[str] = []

    def note(line: str) -> None:
        log.append(line)
        progress(line)

    engine = Engine(hv=hv, store=store, registry=Registry(store, directory), clock=clock,
                    settings=dataclasses.replace(settings, state_dir=directory), log=note,
                    offload=inline,
                    fleet=Fleet(store, local=hv, local_uri=hv.uri, local_pool=settings.pool,
                                connect=lambda uri: by_uri[uri]))
    prober = FakeProber(hv, clock=clock)
    prober.hosts = [f for f in fakes.values() if f is not hv]
    world = SimWorld(clock, hv, store, prober, Env(engine=engine, prober=prober, progress=note),
                     log, fakes)
    if observed is not None:
        instances = store.list_instances(set_name)  # once, not once per host
        for host in observed:
            if host.observed is not None:
                _mirror(world, [i for i in instances if i.host == host.name], host.name,
                        host.observed)
        world.clock.advance(timings.guest_boot_seconds)  # the guests that run have booted
    return world


def _mirror(world: SimWorld, instances: Sequence[InstanceRecord], host: str,
            observed: Observed) -> None:
    hv = world.hosts[host]
    env = world.env
    network = observed.network.name
    pool = env.engine.at(host).pool
    local_of = {f.sha256: f.local for image in env.registry.list() for f in copies.files_of(image)}
    for image in env.registry.list():
        for path in (image.disk, image.kernel, image.initrd):
            if path is not None:  # what instances made before images were copied back on
                hv.add_external_file(str(path))
    for rec in env.store.image_copies(host):
        local = local_of.get(rec.sha256)
        with contextlib.suppress(HypervisorError):
            hv.add_file_volume(pool, name=rec.volume, source=str(local or ""), sha256=rec.sha256,
                               size=local.stat().st_size if local and local.exists() else 0,
                               fmt="qcow2" if rec.volume.endswith(".qcow2") else "raw")
    for reservation in observed.reservations:
        with contextlib.suppress(HypervisorError):  # libvirt's own, whatever it holds
            hv.add_reservation(network, reservation)
    for ip, mac in observed.leases.items():
        hv.add_lease(network, ip, mac)
    known = _Known(world.env.engine)
    for inst in instances:
        _mirror_instance(world, hv, inst, state=observed.power.get(inst.name, PowerState.MISSING),
                         known=known)
    pool = observed.pool.name
    info = hv.pool_info(pool)
    used = info.capacity_bytes - info.available_bytes
    hv.set_pool_capacity(pool, used + observed.pool.available_bytes)
    # the mirrored domains that run are in the real host's figures already
    running = _ROOMY - hv.host_info().memory_bytes_available
    real = observed.host
    hv.set_host(dataclasses.replace(
        real, memory_bytes_free=real.memory_bytes_free + running,
        memory_bytes_available=real.memory_bytes_available + running))


@dataclass
class _Known:
    """What the instances of one host's mirror share, looked up once for all of them."""

    engine: Engine
    images: dict[str, Image] = field(default_factory=dict)
    models: dict[tuple[str, int], Model] = field(default_factory=dict)
    reserved: dict[str, set[str]] = field(default_factory=dict)  # names, by network

    def image(self, ref: str) -> Image:
        if ref not in self.images:
            self.images[ref] = self.engine.registry.get(ref)
        return self.images[ref]

    def model(self, set_name: str, generation: int) -> Model:
        if (set_name, generation) not in self.models:
            self.models[set_name, generation] = validate(
                Model, self.engine.store.model_of_generation(set_name, generation))
        return self.models[set_name, generation]


def _mirror_instance(world: SimWorld, hv: FakeHypervisor, inst: InstanceRecord, *,
                     state: PowerState, known: _Known) -> None:
    """One instance in the fake hypervisor: its volumes and reservation, and its domain as
    defined for its own generation, started if libvirt runs it; unhealthy now (Unhealthy or
    Unknown in the store) and running: unhealthy in the simulation, also after an upgrade."""
    engine = world.env.engine
    pool = engine.at(inst.host).pool
    try:
        image = known.image(inst.image)
        model = known.model(inst.set_name, inst.model_generation)
    except NotFound:
        return  # nothing to mirror it from: the simulated upgrade makes it anew
    names = InstanceNames(inst.name)
    base = copies.recorded(engine.store, inst.host, image) or HostImage(
        str(image.disk), str(image.kernel) if image.kernel else None,
        str(image.initrd) if image.initrd else None)
    hv.create_overlay(pool, name=inst.os_volume, backing_path=base.disk,
                      backing_format="qcow2", capacity_bytes=max(image.virtual_size, 1))
    if inst.prev_os_volume:
        with contextlib.suppress(NotFound, Gone):
            prev = known.image(inst.prev_image) if inst.prev_image else image
            hv.create_overlay(pool, name=inst.prev_os_volume, backing_path=str(prev.disk),
                              backing_format="qcow2", capacity_bytes=max(prev.virtual_size, 1))
    for disk in model.data_disks:
        hv.create_volume(pool, name=names.data_volume(disk.lun),
                         capacity_bytes=disk.size_gib * GIB)
    hv.upload_volume(pool, name=names.seed_volume, data=b"")
    if inst.network not in known.reserved:  # listed once, then kept up to date
        known.reserved[inst.network] = {r.name for r in hv.list_reservations(inst.network)}
    if inst.name not in known.reserved[inst.network]:
        with contextlib.suppress(HypervisorError):
            hv.add_reservation(inst.network, Reservation(inst.mac, inst.ip, inst.name))
            known.reserved[inst.network].add(inst.name)
    if state is PowerState.MISSING:
        return
    hv.define_domain(build_domain(engine, inst, model, image, base=base,
                                  pool_path=Path(hv.pool_info(pool).path)))
    if state is PowerState.RUNNING:
        hv.start(inst.name)
        if inst.health.get("state") in (HealthState.UNHEALTHY.value, HealthState.UNKNOWN.value):
            world.prober.unhealthy.add(inst.name)

