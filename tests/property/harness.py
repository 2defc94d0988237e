"""Shared machinery of the rolling-upgrade property tests: a scenario (capacity, policy,
failure pattern), a fake world set up for it, a watcher that checks the availability and
surge invariants after every hypervisor call, and an independent model of the rolling rules
(docs/semantics.md#rolling) that predicts the batches and the final status.

Owned here: ``Scenario``, ``Prediction``/``predict``, ``Watcher``, ``Run``/``prepare``,
``leaks``. Used by the modules of ``tests/property``; uses ``tests.world.make_world``
for the fake world (FakeHypervisor, FakeProber, FakeClock, the use cases).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.hypervisor.base import VERBS
from orchestrator.hypervisor.domainxml import Domain
from orchestrator.hypervisor.fake import FakeHypervisor
from orchestrator.model import ScaleSetSpec, validate
from tests.world import Upgrades, World, make_world

SET = "web"
OLD, NEW = "tiny:1", "tiny:2"
# A rolling upgrade of 12 fake instances makes a few thousand calls (ACPI-deaf guests poll
# for a minute each); far more means the driver loops without end.
CALL_BUDGET = 60_000


class Runaway(AssertionError):
    """The upgrade made more hypervisor calls than any finite run of the scenario needs."""


def batch_limit(capacity: int, percent: int) -> int:
    """docs/semantics.md#rounding stated independently of ``engine.policy``: percent of
    capacity, rounded down, at least 1."""
    return max(1, capacity * percent // 100)


def allowed(percent: int, count: int) -> int:
    return percent * count // 100


@dataclass(frozen=True)
class Scenario:
    capacity: int
    batch_percent: int = 20
    unhealthy_percent: int = 20
    upgraded_percent: int = 20
    prioritize: bool = False
    rollback: bool = False
    surge: bool = False
    pause: int = 0
    pre_unhealthy: frozenset[int] = frozenset()  # unhealthy on the old image, healed by the new
    fail_new: frozenset[int] = frozenset()  # unhealthy once on the new image
    broken: bool = False  # the new image fails every instance's health command
    acpi_deaf: frozenset[int] = frozenset()  # guests that ignore the ACPI power button
    protected: frozenset[int] = frozenset()  # protectFromScaleSetActions
    pre_upgraded: frozenset[int] = frozenset()  # on the new generation before the upgrade

    def policy(self) -> dict[str, Any]:
        return {
            "maxBatchInstancePercent": self.batch_percent,
            "maxUnhealthyInstancePercent": self.unhealthy_percent,
            "maxUnhealthyUpgradedInstancePercent": self.upgraded_percent,
            "prioritizeUnhealthyInstances": self.prioritize,
            "rollbackFailedInstancesOnPolicyBreach": self.rollback,
            "maxSurge": self.surge,
            "pauseTimeBetweenBatches": f"PT{self.pause}S",
        }

    @property
    def batch(self) -> int:
        return batch_limit(self.capacity, self.batch_percent)


@dataclass
class Prediction:
    code: str  # Completed | Faulted | Loop (the model found no end)
    batches: list[list[int]] = field(default_factory=list)
    failed: list[list[int]] = field(default_factory=list)
    generation: dict[int, int] = field(default_factory=dict)  # final, by instanceId
    healthy: dict[int, bool] = field(default_factory=dict)
    fault: str | None = None  # "unhealthy" (before a batch) | "upgraded" (after one)

    @property
    def all_failed(self) -> set[int]:
        return {i for f in self.failed for i in f}


def predict(s: Scenario, *, max_batches: int = 200) -> Prediction:
    """What docs/semantics.md#rolling says a rolling upgrade of ``s`` does, written from the
    document, not from ``engine.policy``: batches in instanceId order (unhealthy first if
    prioritized), the unhealthy threshold over all instances before each batch, the upgraded
    threshold over every instance upgraded so far after each batch."""
    gen = {i: (2 if i in s.pre_upgraded else 1) for i in range(s.capacity)}
    healthy = {i: (not s.broken if i in s.pre_upgraded else i not in s.pre_unhealthy)
               for i in range(s.capacity)}
    upgraded: dict[int, bool] = {}
    tried: set[int] = set()  # an upgrade tries each instance once (a failed surge leaves it)
    out = Prediction(code="Loop")
    next_id = s.capacity
    for _ in range(max_batches):
        todo = [i for i in sorted(gen)
                if gen[i] != 2 and i not in s.protected and i not in tried]
        if not todo:
            out.code = "Completed"
            break
        if s.prioritize:
            todo.sort(key=lambda i: (healthy[i], i))
        bad_now = sum(1 for h in healthy.values() if not h)
        if bad_now > allowed(s.unhealthy_percent, s.capacity):
            out.code, out.fault = "Faulted", "unhealthy"
            break
        batch = todo[:s.batch]
        tried.update(batch)
        failed: list[int] = []
        for old in batch:
            if s.surge:
                if s.broken:
                    upgraded[old] = False
                    failed.append(old)
                else:
                    del gen[old], healthy[old]
                    gen[next_id], healthy[next_id] = 2, True
                    upgraded[next_id] = True
                next_id += 1
            else:
                ok = not s.broken and old not in s.fail_new
                gen[old], healthy[old] = 2, ok
                upgraded[old] = ok
                if not ok:
                    failed.append(old)
        out.batches.append(batch)
        out.failed.append(failed)
        bad = sum(1 for ok in upgraded.values() if not ok)
        if bad > allowed(s.upgraded_percent, len(upgraded)):
            out.code, out.fault = "Faulted", "upgraded"
            break
    if out.code == "Faulted" and s.rollback and not s.surge:
        # docs/semantics.md#rollback: on Faulted, the failed instances return to the previous model
        for i in out.all_failed:
            gen[i], healthy[i] = 1, i not in s.pre_unhealthy
    out.generation, out.healthy = gen, healthy
    return out


def _image_of(hv: FakeHypervisor, domain: Domain) -> str | None:
    """The registry's disk file the domain's OS disk rests on (through the host's copy)."""
    for disk in domain.disks:
        if disk.backing is not None:
            return hv.source_of(disk.backing.path) or disk.backing.path
    return None


def _instance_id(name: str) -> int:
    return int(name.removeprefix(f"{SET}-"))


@dataclass
class Watcher:
    """Wraps every hypervisor verb of ``world.hv``; while ``armed``, checks after each call
    the availability floor (in place) or the surge ceiling and health (maxSurge)."""

    world: World
    scenario: Scenario
    check_surge_health: bool = False
    armed: bool = False
    checks: int = 0
    max_domains: int = 0
    min_healthy: int | None = None
    hooks: list[Callable[[str, str], None]] = field(default_factory=list)
    budget: int = CALL_BUDGET

    def install(self) -> None:
        hv = self.world.hv
        for verb in VERBS:  # every verb of the protocol: the world is checked after each
            setattr(hv, verb, self._wrap(verb, getattr(hv, verb)))

    def _wrap(self, verb: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = fn(*args, **kwargs)
            name = args[0].name if verb == "define_domain" else str(args[0] if args else "")
            for hook in self.hooks:
                hook(verb, name)
            if self.armed:
                self.check(verb, name)
            return result
        return wrapped

    def failing(self, name: str, domain: Domain) -> bool:
        """What the FakeProber would answer for a ready guest (its rules, restated)."""
        prober = self.world.prober
        return name in prober.unhealthy or _image_of(self.world.hv, domain) in prober.broken_images

    def healthy(self, name: str, domain: Domain) -> bool:
        return self.world.hv.guest_ready(name) and not self.failing(name, domain)

    def current_batch(self) -> tuple[set[int], bool]:
        """The instances being acted on, and whether that is a rollback: the batch in
        flight, or after it every instance that failed so far while the upgrade still runs
        (a rollback returns them all, and they were unhealthy already)."""
        rec = self.world.store.latest_rolling_upgrade(SET)
        if rec is None:
            return set(), False
        in_flight = rec.detail.get("inFlight") or []
        if in_flight:
            return set(in_flight), False
        batches = rec.detail.get("batches") or []
        if rec.status == "RollingForward" and batches:
            return {i for b in batches for i in b["failed"]}, True
        return set(), False

    def check(self, verb: str, name: str) -> None:
        self.checks += 1
        hv = self.world.hv
        if len(hv.calls) > self.budget:
            raise Runaway(f"more than {self.budget} hypervisor calls: the upgrade does not end")
        s = self.scenario
        domains = {n: d for n, d in hv.domains.items()
                   if d.owner is not None and d.owner.set_name == SET}
        self.max_domains = max(self.max_domains, len(domains))
        healthy = sum(1 for n, d in domains.items() if self.healthy(n, d))
        self.min_healthy = healthy if self.min_healthy is None else min(self.min_healthy, healthy)
        where = f"after {verb}({name}) at t={self.world.clock.monotonic():.1f}"
        if s.surge:
            assert len(domains) <= s.capacity + s.batch, (
                f"surge ceiling: {len(domains)} domains > capacity {s.capacity} + batch "
                f"{s.batch} {where}")
            if self.check_surge_health:
                assert healthy >= s.capacity, (
                    f"surge: only {healthy} healthy < capacity {s.capacity} {where}")
            return
        batch, rollback = self.current_batch()
        outside = {n: d for n, d in domains.items() if _instance_id(n) not in batch}
        up = sum(1 for n, d in outside.items() if self.healthy(n, d))
        known_bad = sum(1 for n, d in outside.items() if self.failing(n, d))
        down = sorted(n for n, d in outside.items()
                      if not self.failing(n, d) and not hv.guest_ready(n))
        # a rollback acts only on instances already unhealthy: they may outnumber a batch
        floor = s.capacity - (len(batch) if rollback else s.batch) - known_bad
        assert up >= floor and not down, (
            f"availability floor: {up} healthy outside batch {sorted(batch)} < {floor} "
            f"(capacity {s.capacity} - batch {s.batch} - unhealthy {known_bad}); "
            f"down: {down} {where}")


@dataclass
class Run:
    world: World
    upgrades: Upgrades
    watcher: Watcher
    os_before: dict[int, str]
    calls_before: int


def spec(s: Scenario) -> ScaleSetSpec:
    return validate(ScaleSetSpec, {
        "name": SET, "capacity": s.capacity, "model": {"image": OLD},
        "upgradePolicy": {"mode": "Rolling", "rollingUpgradePolicy": s.policy()}})


def prepare(tmp: Path, s: Scenario, *, check_surge_health: bool = False) -> Run:
    """A set of ``s.capacity`` healthy instances on tiny:1, the model moved to tiny:2
    (generation 2) without rolling it out, the scenario's faults armed and the watcher on."""
    world = make_world(tmp)
    world.register_image("tiny", "2")
    upgrades = Upgrades(world.service)
    world.service.create(spec(s))
    upgrades.update(SET, {"model": {"image": NEW}}, wait=False)
    if s.pre_upgraded:
        upgrades.update_instances(SET, sorted(s.pre_upgraded))
    for i in s.protected:
        world.service.protect(SET, i, scale_in=None, set_actions=True)
    new_disk = str(world.registry.get(NEW).disk)
    if s.broken:
        world.prober.broken_images.add(new_disk)
    for i in s.pre_unhealthy:
        world.prober.unhealthy.add(f"{SET}-{i}")
    for i in s.acpi_deaf:
        world.hv.set_ignores_acpi(f"{SET}-{i}")
    watcher = Watcher(world, s, check_surge_health=check_surge_health)

    def health_follows_image(verb: str, name: str) -> None:
        # the failure pattern belongs to (instance, image): redefining a domain on another
        # image changes what its health command answers
        if verb != "define_domain":
            return
        i = _instance_id(name)
        on_new = _image_of(world.hv, world.hv.domains[name]) == new_disk
        bad = (i in s.fail_new) if on_new else (i in s.pre_unhealthy)
        (world.prober.unhealthy.add if bad else world.prober.unhealthy.discard)(name)

    watcher.hooks.append(health_follows_image)
    watcher.install()
    os_before = {i.instance_id: i.os_volume for i in world.store.list_instances(SET)}
    return Run(world, upgrades, watcher, os_before, len(world.hv.calls))


def leaks(world: World) -> list[str]:
    """Differences between libvirt's objects and the store's instances (empty: none)."""
    problems: list[str] = []
    instances = world.store.list_instances(SET)
    domains, volumes, reservations = world.resources()
    names = {i.name for i in instances}
    if domains != names:
        problems.append(f"domains {sorted(domains ^ names)} differ from the store")
    if reservations != names:
        problems.append(f"reservations {sorted(reservations ^ names)} differ from the store")
    expected = {v for i in instances for v in (i.os_volume, i.prev_os_volume, f"{i.name}-seed.iso")
                if v}
    # a console log (virtlogd's, made at the first start) of an instance of the store only
    expected |= {f"{i.name}-console.log" for i in instances} & volumes
    if volumes != expected:
        problems.append(f"volumes {sorted(volumes ^ expected)} differ from the store")
    for i in instances:
        owner = world.hv.domains[i.name].owner if i.name in domains else None
        if owner is None or owner.instance_id != i.instance_id:
            problems.append(f"{i.name}: owner {owner}")
    return problems
