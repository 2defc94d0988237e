"""The health of a set's instances as the use cases see it: waiting until instances are
settled, one probe round for views and thresholds, and a monitor that keeps the health of
the instances outside a batch current while the batch runs.

Owned here: ``Probe`` (what probing a set needs, read once: settings, admin key, each
instance's SSH user), ``record_boot``, ``await_health``, ``probe_round``, ``Monitor``,
``raise_unhealthy``. Health records are persisted as they change; the console lines of
the instances a wait leaves not Healthy are kept for the error (``usecases.bootdiag``).
The state machine itself is ``engine.health``'s.

Called by: usecases.controller, usecases.recovery, usecases.repairs, usecases.rolling,
usecases.rollout, usecases.sets, usecases.updates, usecases.views
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator import ssh
from orchestrator.clock import Clock
from orchestrator.engine.health import (
    HealthRecord,
    HealthState,
    ProbeSettings,
    ProbeTarget,
    grace_left,
    probe_once,
    record_from_json,
    record_to_json,
    wait_settled,
)
from orchestrator.errors import NotFound, OperationFailed
from orchestrator.hypervisor.base import PowerState
from orchestrator.images import Image
from orchestrator.model import Model
from orchestrator.store import InstanceRecord, Store
from orchestrator.usecases import bootdiag, placement
from orchestrator.usecases.session import Env, Session


def probe_settings(model: Model, image: Image) -> ProbeSettings:
    hp = model.health_probe
    return ProbeSettings(command=hp.command or image.health_command, port=hp.port,
                         interval_seconds=hp.interval_seconds,
                         timeout_seconds=hp.timeout_seconds,
                         number_of_probes=hp.number_of_probes,
                         grace_period_seconds=hp.grace_period_seconds,
                         fail_fast_after_probes=hp.fail_fast_after_probes)


@dataclass
class Probe:
    """What probing one set's instances needs, read once."""

    env: Env
    set_name: str
    settings: ProbeSettings
    key: ssh.KeyPair
    _users: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, env: Env, set_name: str, *, key: ssh.KeyPair | None = None) -> Probe | None:
        """None when the set's image is no longer registered (nothing can be probed)."""
        spec = env.spec_of(set_name)
        try:
            image = env.registry.get(spec.model.image)
        except NotFound:
            return None
        return cls(env, set_name, probe_settings(spec.model, image),
                   key if key is not None else env.admin_key(set_name))

    def _user(self, inst: InstanceRecord) -> str:
        if inst.image not in self._users:
            try:
                self._users[inst.image] = self.env.registry.get(inst.image).ssh_user
            except NotFound:
                self._users[inst.image] = "root"
        return self._users[inst.image]

    def endpoint(self, inst: InstanceRecord) -> ssh.Endpoint:
        return ssh.Endpoint(host=inst.ip, port=self.settings.port, user=self._user(inst),
                            client_key=self.key.private_openssh, host_key=inst.host_key_public)

    def target(self, inst: InstanceRecord) -> ProbeTarget:
        return ProbeTarget(name=inst.name, endpoint=self.endpoint(inst))


def session_probe(session: Session) -> Probe:
    image = session.env.registry.get(session.spec.model.image)
    return Probe(session.env, session.set_name, probe_settings(session.spec.model, image),
                 session.key)


def record_boot(store: Store, clock: Clock, inst: InstanceRecord) -> InstanceRecord:
    """The instance was (re)started now: its grace period starts."""
    health = record_to_json(HealthRecord.initial(clock.monotonic()), clock)
    return store.update_instance(inst, health=health)


def _persist(env: Env, set_name: str, instance_id: int, rec: HealthRecord) -> None:
    env.store.set_health(set_name, instance_id, record_to_json(rec, env.clock))


async def await_health(probe: Probe, instances: Sequence[InstanceRecord]) -> dict[int, HealthRecord]:
    """Probe ``instances`` until each is settled; their health is persisted as it
    changes. Says when a state changes, every 30 s how much of the grace period is left for
    an instance not yet Healthy, and when failFastAfterProbes ended one's grace period early.
    Returns the final record by instanceId."""
    if not instances:
        return {}
    env = probe.env
    settings = probe.settings
    by_name = {i.name: i for i in instances}
    records = {i.name: record_from_json(i.health, env.clock) for i in instances}
    started = env.clock.monotonic()
    hinted: set[str] = set()

    def on_change(name: str, rec: HealthRecord) -> None:
        _persist(env, probe.set_name, by_name[name].instance_id, rec)
        env.progress(f"{name}: {rec.state.value} after {env.clock.monotonic() - started:.1f}s")

    def on_waiting(name: str, rec: HealthRecord, left: float) -> None:
        hint = ""
        if (rec.state is HealthState.UNHEALTHY and not settings.fail_fast_after_probes
                and name not in hinted):
            # once per instance: the user who wants a verdict sooner learns how to ask
            hinted.add(name)
            hint = ("; for a verdict sooner: --health-probe-fail-fast-after-probes N "
                    "(healthProbe.failFastAfterProbes)")
        env.progress(f"{name}: {rec.state.value}, still within its grace period: {left:.0f}s "
                     f"of {settings.grace_period_seconds:g}s left{_why(rec)}{hint}")

    def on_failed_fast(name: str, rec: HealthRecord) -> None:
        n = settings.fail_fast_after_probes
        left = grace_left(rec, settings=settings, now=env.clock.monotonic())
        env.progress(f"{name}: {n} health probes failed in a row (failFastAfterProbes {n}): "
                     f"{rec.state.value} without waiting out the {left:.0f}s left of its "
                     f"grace period{_why(rec)}")

    final = await wait_settled([probe.target(i) for i in instances], records,
                               prober=env.prober, settings=settings, clock=env.clock,
                               on_change=on_change, on_waiting=on_waiting,
                               on_failed_fast=on_failed_fast)
    for name, rec in final.items():
        _persist(env, probe.set_name, by_name[name].instance_id, rec)
    # their console's last lines, read now, for the error the command may end with
    await bootdiag.remember_failures(env, [by_name[name] for name, rec in final.items()
                                           if rec.state is not HealthState.HEALTHY])
    return {by_name[name].instance_id: rec for name, rec in final.items()}


async def running_states(env: Env) -> dict[str, PowerState]:
    """Every domain's power state on the hosts that answer, one call per host."""
    return (await placement.observe_power(env)).states


async def probe_round(probe: Probe, instances: Sequence[InstanceRecord], *,
                      power: dict[str, PowerState] | None = None) -> dict[int, HealthState]:
    """One concurrent probe round over those of ``instances`` that run; their health is
    persisted. Instances not running are absent from the result."""
    env = probe.env
    if power is None:
        power = await running_states(env)
    running = [i for i in instances if i.status == "active"
               and power.get(i.name, PowerState.MISSING) is PowerState.RUNNING]
    if not running:
        return {}
    records = {i.name: record_from_json(i.health, env.clock) for i in running}
    final = await probe_once([probe.target(i) for i in running], records, prober=env.prober,
                             settings=probe.settings, clock=env.clock)
    states: dict[int, HealthState] = {}
    healths: dict[int, dict[str, Any]] = {}
    for inst in running:
        if inst.name in final:
            healths[inst.instance_id] = record_to_json(final[inst.name], env.clock)
            states[inst.instance_id] = final[inst.name].state
    env.store.set_healths(probe.set_name, healths)  # one write for the whole round
    return states


@dataclass
class Monitor:
    """The latest health of the instances a batch does not touch, probed round after round
    while the batch runs, so that the next batch's threshold check needs no round of its
    own. ``watched``: the instanceIds to probe (set before each batch)."""

    probe: Probe
    watched: frozenset[int] = frozenset()
    states: dict[int, HealthState] = field(default_factory=dict)
    probed: frozenset[int] = frozenset()  # the instances the latest round looked at
    unreachable: frozenset[str] = frozenset()  # hosts that did not answer the latest round

    async def round(self) -> None:
        store = self.probe.env.store
        watched = self.watched
        instances = [i for i in store.list_instances(self.probe.set_name)
                     if i.instance_id in watched]
        power = await placement.observe_power(self.probe.env)
        fresh = await probe_round(self.probe, instances, power=power.states)
        # an instance that is not running has no state: it counts as not healthy
        self.states, self.probed, self.unreachable = fresh, watched, power.unreachable

    async def _loop(self) -> None:
        clock = self.probe.env.clock
        while True:
            await clock.sleep(self.probe.settings.interval_seconds)
            await self.round()


@contextlib.asynccontextmanager
async def monitoring(probe: Probe) -> AsyncIterator[Monitor]:
    """A ``Monitor`` probing in the background for as long as the block runs."""
    monitor = Monitor(probe)
    task = asyncio.create_task(monitor._loop())
    try:
        yield monitor
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def raise_unhealthy(action: str, final: dict[str, HealthRecord], *,
                    console: Mapping[str, Sequence[str]] | None = None) -> None:
    """OperationFailed naming every instance of ``final`` that is not Healthy, if any, with
    their last console lines from ``console`` (``Env.console_tails``) as its details."""
    bad = [n for n, r in final.items() if r.state is not HealthState.HEALTHY]
    if bad:
        detail = "; ".join(f"{n} {final[n].state.value}{_why(final[n])}" for n in bad)
        raise OperationFailed(f"{action}: {len(bad)} of {len(final)} instances not healthy: {detail}",
                              details=bootdiag.error_details(console or {}, bad))


def _why(rec: HealthRecord) -> str:
    last = rec.last
    if last is None:
        return " (never answered)"
    if last.error:
        return f" ({last.error})"
    if last.exit_status is not None:
        return f" (health command exit {last.exit_status}: {last.output[:80]})"
    return ""
