"""Instance health: the state machine, the SSH prober, and the concurrent probe loops.

Owned here: ``HealthState`` and its transitions (docs/semantics.md#health), the persisted
(JSON) form of a ``HealthRecord``, how a probe result is classified, how often instances are
probed, and when a wait for health ends.
Called by: cli.app, dryrun.simworld, engine.simulate, usecases.controller, usecases.repairs,
usecases.rolling, usecases.rollout, usecases.session, usecases.views, usecases.watch
``usecases.watch`` waits until instances are settled after a create, scale, power action,
upgrade or reimage (``wait_settled``) and refreshes views and batch checks with
``probe_once``; the other use cases and ``dryrun.simworld`` read the states; ``cli.app`` makes the ``SshProber``;
``engine.simulate`` implements the ``Prober`` protocol for the fake world.

The state machine (``advance``, ``settle``, ``is_settled``) is pure: it is given the time, it
reads no clock, so it is table- and property-tested. The loops read time only through the
injected ``Clock``, so minutes of probing run in milliseconds against ``FakeClock``.

Transitions (N = ``number_of_probes``; a streak is the run of equal results ending now):

- INITIALIZING → HEALTHY after N healthy, → UNHEALTHY after N unhealthy; unreachable results
  keep it INITIALIZING (the guest is booting) while the grace period lasts.
- When the grace period ends, an INITIALIZING instance takes what its streak says even if
  shorter than N: unhealthy → UNHEALTHY, unreachable (or no probe at all) → UNKNOWN; a healthy
  streak shorter than N is not yet a verdict of health, so it becomes UNKNOWN too.
- From a settled state, N equal results of another kind move to that kind's state.
- ``fail_fast_after_probes`` F (0: off): F unhealthy results in a row (the guest answers and
  its health command fails; unreachable results do not count) end the grace period there
  and then: an INITIALIZING instance takes its grace verdict (UNHEALTHY) and a wait for it
  is over.

A long wait says how it goes: ``wait_settled`` calls ``on_waiting`` for an instance still
within its grace period at its first probe after every ``report_every`` seconds of the wait
(30 s), with the grace seconds left, not at every probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal, Protocol

from orchestrator import errors, ssh
from orchestrator.clock import Clock, iso

__all__ = [
    "REPORT_EVERY_SECONDS",
    "HealthRecord",
    "HealthState",
    "ProbeOutcome",
    "ProbeSettings",
    "ProbeTarget",
    "Prober",
    "SshProber",
    "advance",
    "failed_fast",
    "grace_left",
    "is_settled",
    "probe_once",
    "record_from_json",
    "record_to_json",
    "settle",
    "wait_settled",
]

OutcomeKind = Literal["healthy", "unhealthy", "unreachable"]
_EXCERPT_CHARS = 200
# While booting, probe at least this often so an instance is seen soon after sshd is up.
_BOOT_INTERVAL = 1.0
# How often a wait says that an instance is still within its grace period: often enough that
# a five-minute grace period is not silence, rarely enough to stay readable (not per probe).
REPORT_EVERY_SECONDS = 30.0


class HealthState(str, Enum):
    INITIALIZING = "Initializing"
    HEALTHY = "Healthy"
    UNHEALTHY = "Unhealthy"
    UNKNOWN = "Unknown"


@dataclass(frozen=True)
class ProbeSettings:
    command: str = "true"
    port: int = 22
    interval_seconds: float = 5
    timeout_seconds: float = 5
    number_of_probes: int = 1
    grace_period_seconds: float = 300
    fail_fast_after_probes: int = 0  # 0: off


@dataclass(frozen=True)
class ProbeOutcome:
    at: datetime
    kind: OutcomeKind
    exit_status: int | None
    latency: float | None
    output: str  # excerpt, at most 200 characters, one line
    error: str | None


@dataclass(frozen=True)
class HealthRecord:
    state: HealthState
    booted_at: float  # monotonic time the instance was started
    streak_kind: str | None
    streak: int
    last: ProbeOutcome | None
    changed_at: float | None

    @classmethod
    def initial(cls, booted_at: float) -> HealthRecord:
        return cls(
            state=HealthState.INITIALIZING,
            booted_at=booted_at,
            streak_kind=None,
            streak=0,
            last=None,
            changed_at=None,
        )


_STATE_OF_KIND: dict[str, HealthState] = {
    "healthy": HealthState.HEALTHY,
    "unhealthy": HealthState.UNHEALTHY,
    "unreachable": HealthState.UNKNOWN,
}


# --- the pure state machine --------------------------------------------------------------------


def _required(settings: ProbeSettings) -> int:
    return max(1, settings.number_of_probes)


def _grace_over(record: HealthRecord, *, settings: ProbeSettings, now: float) -> bool:
    return now - record.booted_at >= settings.grace_period_seconds


def grace_left(record: HealthRecord, *, settings: ProbeSettings, now: float) -> float:
    """Seconds of the record's grace period still to come (0 once it is over)."""
    return max(0.0, record.booted_at + settings.grace_period_seconds - now)


def failed_fast(record: HealthRecord, *, settings: ProbeSettings) -> bool:
    """True when ``fail_fast_after_probes`` health commands failed in a row: the user asked
    for a verdict then rather than at the end of the grace period. Only unhealthy results
    count: the guest answers, so it has booted and its health command says no."""
    n = settings.fail_fast_after_probes
    return n > 0 and record.streak_kind == "unhealthy" and record.streak >= n


def _grace_verdict(record: HealthRecord, *, settings: ProbeSettings) -> HealthState:
    """What an INITIALIZING instance becomes when its grace period ends."""
    if record.streak_kind == "unhealthy":
        return HealthState.UNHEALTHY
    if record.streak_kind == "healthy" and record.streak >= _required(settings):
        return HealthState.HEALTHY
    return HealthState.UNKNOWN


def _with_state(record: HealthRecord, state: HealthState, *, now: float) -> HealthRecord:
    if state is record.state:
        return record
    return dataclasses.replace(record, state=state, changed_at=now)


def advance(
    record: HealthRecord, outcome: ProbeOutcome, *, settings: ProbeSettings, now: float
) -> HealthRecord:
    """The record after one more probe result (pure)."""
    streak = record.streak + 1 if outcome.kind == record.streak_kind else 1
    probed = dataclasses.replace(record, streak_kind=outcome.kind, streak=streak, last=outcome)
    target = _STATE_OF_KIND[outcome.kind]
    enough = streak >= _required(settings)
    if record.state is HealthState.INITIALIZING:
        if enough and outcome.kind != "unreachable":
            return _with_state(probed, target, now=now)
        if _grace_over(record, settings=settings, now=now) or failed_fast(probed,
                                                                         settings=settings):
            return _with_state(probed, _grace_verdict(probed, settings=settings), now=now)
        return probed
    if enough and target is not record.state:
        return _with_state(probed, target, now=now)
    return probed


def settle(record: HealthRecord, *, settings: ProbeSettings, now: float) -> HealthRecord:
    """Apply the grace-period rule without a new probe (never reached → UNKNOWN at grace end)."""
    over = _grace_over(record, settings=settings, now=now) or failed_fast(record, settings=settings)
    if record.state is HealthState.INITIALIZING and over:
        return _with_state(record, _grace_verdict(record, settings=settings), now=now)
    return record


def is_settled(record: HealthRecord, *, settings: ProbeSettings, now: float) -> bool:
    """True when a wait for this instance is over: HEALTHY, or the grace period has ended
    (at its time, or early by ``fail_fast_after_probes``)."""
    return (record.state is HealthState.HEALTHY
            or _grace_over(record, settings=settings, now=now)
            or failed_fast(record, settings=settings))


# --- probing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeTarget:
    name: str
    endpoint: ssh.Endpoint | None  # None: no address yet / not running


class Prober(Protocol):
    async def probe(self, target: ProbeTarget, settings: ProbeSettings) -> ProbeOutcome: ...


def _excerpt(text: str) -> str:
    return " ".join(text.split())[:_EXCERPT_CHARS]


def _unreachable(at: datetime, error: str, *, latency: float | None = None) -> ProbeOutcome:
    return ProbeOutcome(
        at=at, kind="unreachable", exit_status=None, latency=latency, output="", error=error
    )


class SshProber:
    """Runs the probe command over SSH (host key pinned). ``SecurityError`` propagates."""

    def __init__(self, *, clock: Clock, max_output: int = 4096) -> None:
        self._clock = clock
        self._max_output = max_output

    async def probe(self, target: ProbeTarget, settings: ProbeSettings) -> ProbeOutcome:
        at = self._clock.now()
        if target.endpoint is None:
            return _unreachable(at, "no address yet (instance not running)")
        endpoint = dataclasses.replace(target.endpoint, port=settings.port)
        budget = settings.timeout_seconds
        started = self._clock.monotonic()
        try:
            # Each phase is bounded by the probe time-out, and so is the whole probe.
            async with asyncio.timeout(budget):
                result = await ssh.run_command(
                    endpoint,
                    settings.command,
                    connect_timeout=budget,
                    command_timeout=budget,
                    max_output=self._max_output,
                    clock=self._clock,
                )
        except TimeoutError:
            return _unreachable(
                at,
                f"probe did not finish within {budget:g}s",
                latency=self._clock.monotonic() - started,
            )
        except (errors.Unreachable, errors.Timeout, errors.OperationFailed) as exc:
            return _unreachable(at, exc.one_line(), latency=self._clock.monotonic() - started)
        return ProbeOutcome(
            at=at,
            kind="healthy" if result.exit_status == 0 else "unhealthy",
            exit_status=result.exit_status,
            latency=result.latency,
            output=_excerpt(result.stdout or result.stderr),
            error=None,
        )


async def _bounded_probe(
    prober: Prober,
    target: ProbeTarget,
    *,
    settings: ProbeSettings,
    clock: Clock,
    deadline: float | None,
) -> ProbeOutcome | None:
    """One probe bounded by the probe time-out (→ unreachable) and the deadline (→ None)."""
    budget = settings.timeout_seconds
    cut_by_deadline = False
    if deadline is not None and deadline - clock.monotonic() < budget:
        budget = max(0.0, deadline - clock.monotonic())
        cut_by_deadline = True
    at = clock.now()
    started = clock.monotonic()
    probe = asyncio.ensure_future(prober.probe(target, settings))
    timer = asyncio.ensure_future(clock.sleep(budget))
    try:
        await asyncio.wait({probe, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (probe, timer):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    if probe.done() and not probe.cancelled():
        return probe.result()  # re-raises SecurityError and the like
    if cut_by_deadline:
        return None
    return _unreachable(at, f"probe did not finish within {settings.timeout_seconds:g}s",
                        latency=clock.monotonic() - started)


def _initial_records(
    targets: Sequence[ProbeTarget], records: Mapping[str, HealthRecord], *, now: float
) -> dict[str, HealthRecord]:
    return {t.name: records.get(t.name) or HealthRecord.initial(now) for t in targets}


async def _run_all(coros: Sequence[asyncio.Future[None] | asyncio.Task[None]]) -> None:
    # gather, not TaskGroup: callers want the first error itself (SecurityError), not a group.
    try:
        await asyncio.gather(*coros)
    except BaseException:
        for task in coros:
            task.cancel()
        await asyncio.gather(*coros, return_exceptions=True)
        raise


async def wait_settled(
    targets: Sequence[ProbeTarget],
    records: Mapping[str, HealthRecord],
    *,
    prober: Prober,
    settings: ProbeSettings,
    clock: Clock,
    on_change: Callable[[str, HealthRecord], None] | None = None,
    on_waiting: Callable[[str, HealthRecord, float], None] | None = None,
    on_failed_fast: Callable[[str, HealthRecord], None] | None = None,
    report_every: float = REPORT_EVERY_SECONDS,
    deadline: float | None = None,
) -> dict[str, HealthRecord]:
    """Probe every target concurrently until each is settled (or ``deadline``); the records.
    ``on_change``: a target's state changed. ``on_waiting``: a target is still within its
    grace period after another ``report_every`` seconds of the wait (with the seconds left).
    ``on_failed_fast``: ``fail_fast_after_probes`` ended a target's grace period early."""
    result = _initial_records(targets, records, now=clock.monotonic())
    # reported at a probe, not by a timer of its own: a cancelled sleeper would still move
    # a FakeClock on to its deadline
    next_report = dict.fromkeys(result, clock.monotonic() + report_every)

    def store(name: str, record: HealthRecord) -> HealthRecord:
        previous = result[name]
        result[name] = record
        if on_change is not None and record.state is not previous.state:
            on_change(name, record)
        return record

    async def watch(target: ProbeTarget) -> None:
        name = target.name
        while True:
            now = clock.monotonic()
            record = store(name, settle(result[name], settings=settings, now=now))
            if is_settled(record, settings=settings, now=now):
                return
            if deadline is not None and now >= deadline:
                return
            started = now
            outcome = await _bounded_probe(
                prober, target, settings=settings, clock=clock, deadline=deadline
            )
            if outcome is None:
                return
            now = clock.monotonic()
            record = store(name, advance(result[name], outcome, settings=settings, now=now))
            if is_settled(record, settings=settings, now=now):
                if (on_failed_fast is not None and record.state is not HealthState.HEALTHY
                        and not _grace_over(record, settings=settings, now=now)):
                    on_failed_fast(name, record)
                return
            if on_waiting is not None and now >= next_report[name]:
                while next_report[name] <= now:
                    next_report[name] += report_every
                on_waiting(name, record, grace_left(record, settings=settings, now=now))
            interval = settings.interval_seconds
            if record.state is HealthState.INITIALIZING:
                interval = min(_BOOT_INTERVAL, interval)
            # Wake no later than the grace end or the deadline, so both take effect on time.
            wake = min(started + interval, record.booted_at + settings.grace_period_seconds)
            if deadline is not None:
                wake = min(wake, deadline)
            await clock.sleep(max(0.0, wake - now))

    loop = asyncio.get_running_loop()
    await _run_all([loop.create_task(watch(t)) for t in targets])
    return result


async def probe_once(
    targets: Sequence[ProbeTarget],
    records: Mapping[str, HealthRecord],
    *,
    prober: Prober,
    settings: ProbeSettings,
    clock: Clock,
) -> dict[str, HealthRecord]:
    """One concurrent round of probes (``list-instances`` refresh, a rolling upgrade's
    monitor); the updated records, each advanced when its own outcome arrives.

    The probes of a round start together, so one timer cuts them all at the probe time-out,
    as ``_bounded_probe`` cuts one: a round over a large set is mostly event-loop work, and
    a timer task and a wait per probe made it about half as much again."""
    result = _initial_records(targets, records, now=clock.monotonic())
    if not targets:
        return result
    loop = asyncio.get_running_loop()
    at = clock.now()
    started = clock.monotonic()
    answered = loop.create_future()  # every probe has answered, or one raised
    recorded: set[int] = set()
    failures: list[BaseException] = []
    cutting = False

    def record(index: int, task: asyncio.Task[ProbeOutcome]) -> None:
        if task.cancelled():  # cut (by the timer, or on its own: as _bounded_probe says it)
            outcome = _unreachable(
                at, f"probe did not finish within {settings.timeout_seconds:g}s",
                latency=clock.monotonic() - started)
        elif (exc := task.exception()) is not None:
            failures.append(exc)
            return
        else:
            outcome = task.result()
        now = clock.monotonic()
        name = targets[index].name
        result[name] = settle(advance(result[name], outcome, settings=settings, now=now),
                              settings=settings, now=now)
        recorded.add(index)

    def answer(index: int, task: asyncio.Task[ProbeOutcome]) -> None:
        if cutting:
            return  # the round is over: what is left is recorded below
        record(index, task)
        if (failures or len(recorded) == len(targets)) and not answered.done():
            answered.set_result(None)

    probes = [loop.create_task(prober.probe(target, settings)) for target in targets]
    for index, task in enumerate(probes):
        task.add_done_callback(functools.partial(answer, index))
    timer = loop.create_task(clock.sleep(settings.timeout_seconds))
    try:
        await asyncio.wait({answered, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        cutting = True
        unfinished: list[asyncio.Task[Any]] = [t for t in (timer, *probes) if not t.done()]
        for pending in unfinished:
            pending.cancel()
        answered.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
    for index, task in enumerate(probes):
        if not failures and index not in recorded:
            record(index, task)
    if failures:
        raise failures[0]  # SecurityError and the like, as a lone probe would raise it
    return result


# --- the persisted form (the store keeps it; any process reads it back) -----------------
def record_to_json(rec: HealthRecord, clock: Clock) -> dict[str, Any]:
    """Monotonic times become wall-clock ISO strings so that any process can read them."""
    offset = clock.now().timestamp() - clock.monotonic()
    last = rec.last
    return {
        "state": rec.state.value,
        "bootedAt": _wall(rec.booted_at + offset),
        "changedAt": _wall(rec.changed_at + offset) if rec.changed_at is not None else None,
        "streakKind": rec.streak_kind,
        "streak": rec.streak,
        "last": None if last is None else {
            "time": iso(last.at),
            "kind": last.kind,
            "exitStatus": last.exit_status,
            "latencyMs": None if last.latency is None else round(last.latency * 1000),
            "output": last.output,
            "error": last.error,
        },
    }


def record_from_json(data: dict[str, Any], clock: Clock) -> HealthRecord:
    """The record of ``record_to_json``; ``{}`` (nothing probed since the last boot) is a
    record booted now."""
    offset = clock.now().timestamp() - clock.monotonic()
    if not data:
        return HealthRecord.initial(clock.monotonic())
    booted = _parse_wall(data.get("bootedAt")) - offset
    changed = data.get("changedAt")
    last = data.get("last")
    outcome = None
    if last:
        outcome = ProbeOutcome(
            at=datetime.fromtimestamp(_parse_wall(last["time"]), tz=UTC),
            kind=last["kind"], exit_status=last["exitStatus"],
            latency=None if last["latencyMs"] is None else last["latencyMs"] / 1000,
            output=last["output"], error=last["error"],
        )
    return HealthRecord(
        state=HealthState(data.get("state", HealthState.INITIALIZING.value)),
        booted_at=booted,
        streak_kind=data.get("streakKind"),
        streak=int(data.get("streak", 0)),
        last=outcome,
        changed_at=None if changed is None else _parse_wall(changed) - offset,
    )


def _wall(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds")


def _parse_wall(text: str | None) -> float:
    if not text:
        return 0.0
    return datetime.fromisoformat(text).timestamp()
