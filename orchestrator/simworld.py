"""A simulated copy of a scale set's world, for dry runs: the real upgrade code acts on it in
fake time and nothing real is touched.

Owned here: ``SimWorld`` and ``build_world`` (a temporary copy of the store made with
sqlite3's backup API; a ``FakeHypervisor`` on a ``FakeClock`` holding the set's domains,
volumes and DHCP reservations, running or stopped as libvirt shows them now; the pool's free
bytes and the network's reservations and leases of the real host; a ``FakeProber`` that keeps
the instances unhealthy now unhealthy), what is read of the real host (``Observed``,
``observe``: read-only calls only) and the boot and shutdown times assumed (``Timings``,
``measure_timings``: this set's stored boot-to-Healthy times, else stated defaults).
Called by ``plan``; built from ``hypervisor.fake``, ``engine.simulate`` and ``clock.FakeClock``
(the fakes the unit tests use), with the real ``Service`` and ``Upgrades`` on top.
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
from orchestrator.engine.health import HealthState, record_from_json
from orchestrator.engine.operations import GIB, Engine, InstanceNames, Settings, build_domain
from orchestrator.engine.simulate import FakeProber
from orchestrator.errors import Gone, HypervisorError, NotFound
from orchestrator.hypervisor.base import (
    Hypervisor,
    NetworkInfo,
    PoolInfo,
    PowerState,
    Reservation,
)
from orchestrator.hypervisor.fake import FakeHypervisor
from orchestrator.images import Registry
from orchestrator.model import Model, validate
from orchestrator.service import Service
from orchestrator.store import InstanceRecord, RollingUpgradeRecord, Store
from orchestrator.upgrades import Upgrades

# DESIGN §3, measured on this kind of machine: the tiny image to SSH-ready under TCG, and
# its ACPI shutdown until the domain is gone.
DEFAULT_BOOT_SECONDS = 6.5
DEFAULT_SHUTDOWN_SECONDS = 1.5
# A booting instance is probed every second (``engine.health``): a measured boot-to-Healthy
# time holds on average half a second of waiting for the next probe, which the simulation's
# own probing adds again.
_PROBE_LAG = 0.5
# The simulated pool starts this large; once the set's volumes are in it, its capacity is
# cut so that exactly the real pool's free bytes remain.
_ROOMY = 2**62


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
    pool: PoolInfo
    network: NetworkInfo
    reservations: list[Reservation]
    leases: dict[str, str]


def observe(hv: Hypervisor, *, pool: str, network: str) -> Observed:
    """Read the real host: which domains run, the pool's free bytes, the network's
    addresses. Only read-only verbs of the ``Hypervisor`` protocol are called."""
    return Observed(
        power={d.name: d.state for d in hv.list_domains()},
        pool=hv.pool_info(pool),
        network=hv.network_info(network),
        reservations=hv.list_reservations(network),
        leases=hv.leased_addresses(network),
    )


# --- the simulated world -----------------------------------------------------------------------
class TimedStore(Store):
    """The simulation's store. It notes on the fake clock when each batch of a rolling
    upgrade starts (its instances recorded in flight) and ends (its outcome recorded in the
    upgrade's ``batches``): ``batch_times[upgrade id][k] == [start, end]``."""

    def __init__(self, path: Path, *, clock: FakeClock) -> None:
        super().__init__(path)
        self._clock = clock
        self.batch_times: dict[int, list[list[float]]] = {}

    def update_rolling_upgrade(self, rec: RollingUpgradeRecord,
                               **changes: Any) -> RollingUpgradeRecord:
        new = super().update_rolling_upgrade(rec, **changes)
        detail = changes.get("detail")
        if isinstance(detail, dict):
            now = self._clock.monotonic()
            times = self.batch_times.setdefault(new.id, [])
            done = len(detail.get("batches") or [])
            for window in times[:done]:
                if len(window) == 1:
                    window.append(now)
            if detail.get("inFlight") and len(times) == done:
                times.append([now])
        return new


@dataclass
class SimWorld:
    clock: FakeClock
    hv: FakeHypervisor
    store: TimedStore
    prober: FakeProber
    upgrades: Upgrades
    log: list[str] = field(default_factory=list)

    def close(self) -> None:
        self.store.close()


def build_world(source: Store, directory: Path, *, set_name: str, settings: Settings,
                now: float, timings: Timings, observed: Observed | None,
                progress: Callable[[str], None] = lambda line: None) -> SimWorld:
    """A simulated world in ``directory`` (new; its state dir), with a copy of ``source``.

    With ``observed``, the set's instances are mirrored into the fake hypervisor as the real
    host shows them (see the module docstring), and the fake clock is moved past their boot.
    Without it, the hypervisor is empty: enough for the checks an update makes before it acts.
    """
    directory.mkdir(mode=0o700)
    source.backup_to(directory / "orchestrator.db")
    clock = FakeClock(start=now)
    if observed is None:
        hv = FakeHypervisor(clock=clock)
    else:
        pool = observed.pool
        hv = FakeHypervisor(clock=clock, boot_seconds=timings.guest_boot_seconds,
                            shutdown_seconds=timings.shutdown_seconds,
                            networks=[observed.network],
                            pools=[PoolInfo(pool.name, pool.path, _ROOMY, _ROOMY, pool.active)])
    store = TimedStore(directory / "orchestrator.db", clock=clock)
    log: list[str] = []

    def note(line: str) -> None:
        log.append(line)
        progress(line)

    engine = Engine(hv=hv, store=store, registry=Registry(store, directory), clock=clock,
                    settings=dataclasses.replace(settings, state_dir=directory), log=note)
    prober = FakeProber(hv, clock=clock)
    service = Service(engine=engine, prober=prober, progress=note)
    world = SimWorld(clock, hv, store, prober, Upgrades(service), log)
    if observed is not None:
        _mirror(world, set_name, observed)
    return world


def _mirror(world: SimWorld, set_name: str, observed: Observed) -> None:
    hv = world.hv
    service = world.upgrades.service
    network = observed.network.name
    for image in service.registry.list():
        for path in (image.disk, image.kernel, image.initrd):
            if path is not None:
                hv.add_external_file(str(path))
    for reservation in observed.reservations:
        with contextlib.suppress(HypervisorError):  # libvirt's own, whatever it holds
            hv.add_reservation(network, reservation)
    for ip, mac in observed.leases.items():
        hv.add_lease(network, ip, mac)
    service.ensure_admin_key(set_name)  # a throwaway key: the fake prober needs none
    for inst in service.store.list_instances(set_name):
        _mirror_instance(world, inst, state=observed.power.get(inst.name, PowerState.MISSING))
    world.clock.advance(hv.boot_seconds)  # the guests that run have booted
    pool = service.engine.settings.pool
    info = hv.pool_info(pool)
    used = info.capacity_bytes - info.available_bytes
    hv.set_pool_capacity(pool, used + observed.pool.available_bytes)


def _mirror_instance(world: SimWorld, inst: InstanceRecord, *, state: PowerState) -> None:
    """One instance in the fake hypervisor: its volumes and reservation, and its domain as
    defined for its own generation, started if libvirt runs it; unhealthy now (Unhealthy or
    Unknown in the store) and running: unhealthy in the simulation, also after an upgrade."""
    hv = world.hv
    engine = world.upgrades.service.engine
    pool = engine.settings.pool
    try:
        image = engine.registry.get(inst.image)
        model = validate(Model, engine.store.model_of_generation(inst.set_name,
                                                                 inst.model_generation))
    except NotFound:
        return  # nothing to mirror it from: the simulated upgrade makes it anew
    names = InstanceNames(inst.name)
    hv.create_overlay(pool, name=inst.os_volume, backing_path=str(image.disk),
                      backing_format="qcow2", capacity_bytes=max(image.virtual_size, 1))
    if inst.prev_os_volume:
        with contextlib.suppress(NotFound, Gone):
            prev = engine.registry.get(inst.prev_image) if inst.prev_image else image
            hv.create_overlay(pool, name=inst.prev_os_volume, backing_path=str(prev.disk),
                              backing_format="qcow2", capacity_bytes=max(prev.virtual_size, 1))
    for disk in model.data_disks:
        hv.create_volume(pool, name=names.data_volume(disk.lun),
                         capacity_bytes=disk.size_gib * GIB)
    hv.upload_volume(pool, name=names.seed_volume, data=b"")
    if not any(r.name == inst.name for r in hv.list_reservations(inst.network)):
        with contextlib.suppress(HypervisorError, NotFound):
            hv.add_reservation(inst.network, Reservation(inst.mac, inst.ip, inst.name))
    if state is PowerState.MISSING:
        return
    hv.define_domain(build_domain(engine, inst, model, image))
    if state is PowerState.RUNNING:
        hv.start(inst.name)
        if inst.health.get("state") in (HealthState.UNHEALTHY.value, HealthState.UNKNOWN.value):
            world.prober.unhealthy.add(inst.name)
