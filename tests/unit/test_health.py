"""engine.health: the pure state machine (tables + properties) and the probe loops on FakeClock."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator import errors
from orchestrator.clock import FakeClock
from orchestrator.engine.health import (
    HealthRecord,
    HealthState,
    OutcomeKind,
    ProbeOutcome,
    ProbeSettings,
    ProbeTarget,
    advance,
    is_settled,
    probe_once,
    settle,
    wait_settled,
)

T = TypeVar("T")
H: Final[OutcomeKind] = "healthy"
U: Final[OutcomeKind] = "unhealthy"
X: Final[OutcomeKind] = "unreachable"
INIT, HEALTHY, UNHEALTHY, UNKNOWN = (
    HealthState.INITIALIZING,
    HealthState.HEALTHY,
    HealthState.UNHEALTHY,
    HealthState.UNKNOWN,
)
EPOCH = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
STATE_OF = {H: HEALTHY, U: UNHEALTHY, X: UNKNOWN}


def outcome(kind: OutcomeKind) -> ProbeOutcome:
    status = {"healthy": 0, "unhealthy": 1, "unreachable": None}[kind]
    return ProbeOutcome(at=EPOCH, kind=kind, exit_status=status, latency=0.1, output="", error=None)


def feed(
    kinds: list[OutcomeKind], *, n: int = 1, grace: float = 300, step: float = 1.0,
    fail_fast: int = 0,
) -> list[HealthRecord]:
    """The records after each outcome, one outcome every ``step`` seconds from boot at 0."""
    cfg = ProbeSettings(number_of_probes=n, grace_period_seconds=grace,
                        fail_fast_after_probes=fail_fast)
    record = HealthRecord.initial(0.0)
    seen = []
    for i, kind in enumerate(kinds):
        record = advance(record, outcome(kind), settings=cfg, now=(i + 1) * step)
        seen.append(record)
    return seen


# --- the state machine: tables -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kinds", "n", "expected"),
    [
        ([H], 1, [HEALTHY]),
        ([U], 1, [UNHEALTHY]),
        ([X, X, X], 1, [INIT, INIT, INIT]),  # booting: unreachable keeps INITIALIZING
        ([H, H, H], 3, [INIT, INIT, HEALTHY]),
        ([H, U, H, H], 2, [INIT, INIT, INIT, HEALTHY]),  # the streak restarts
        ([U, U], 2, [INIT, UNHEALTHY]),
        ([X, H, X, H], 2, [INIT] * 4),
        ([H, U], 1, [HEALTHY, UNHEALTHY]),
        ([H, H, U, U], 2, [INIT, HEALTHY, HEALTHY, UNHEALTHY]),  # hysteresis once settled
        ([H, H, X, X], 2, [INIT, HEALTHY, HEALTHY, UNKNOWN]),  # unreachable after boot
        ([H, H, X, H, X], 2, [INIT] + [HEALTHY] * 4),
        ([U, X, X, H], 1, [UNHEALTHY, UNKNOWN, UNKNOWN, HEALTHY]),
    ],
)
def test_transitions_within_grace(
    kinds: list[OutcomeKind], n: int, expected: list[HealthState]
) -> None:
    assert [r.state for r in feed(kinds, n=n)] == expected


@pytest.mark.parametrize(
    ("kinds", "n", "expected_last"),
    [
        ([X, X, X, X], 3, UNKNOWN),  # never reachable → UNKNOWN when grace ends
        ([X, X, U, U], 3, UNHEALTHY),  # unhealthy streak shorter than N still counts
        ([X, X, X, H], 3, UNKNOWN),  # one healthy result is no verdict of health
        ([X, H, H, H], 3, HEALTHY),
    ],
)
def test_grace_end_takes_what_the_streak_says(
    kinds: list[OutcomeKind], n: int, expected_last: HealthState
) -> None:
    records = feed(kinds, n=n, grace=3.5)  # probes at 1, 2, 3 (grace) and 4 (after)
    assert [r.state for r in records[:3]] != [] and records[2].state in (INIT, HEALTHY)
    assert records[-1].state is expected_last


def test_streak_counts_and_last_outcome() -> None:
    records = feed([H, H, U, U, U], n=5)
    assert [(r.streak_kind, r.streak) for r in records] == [
        (H, 1),
        (H, 2),
        (U, 1),
        (U, 2),
        (U, 3),
    ]
    assert records[-1].last == outcome(U)


def test_changed_at_is_the_time_of_the_change() -> None:
    records = feed([X, H, H, U], n=1, step=2.0)
    assert [r.changed_at for r in records] == [None, 4.0, 4.0, 8.0]


def test_settle_without_probe_is_unknown_exactly_at_grace_end() -> None:
    cfg = ProbeSettings(grace_period_seconds=60)
    record = HealthRecord.initial(100.0)
    assert settle(record, settings=cfg, now=159.999) == record
    settled = settle(record, settings=cfg, now=160.0)
    assert (settled.state, settled.changed_at) == (UNKNOWN, 160.0)


def test_settle_leaves_settled_states_alone() -> None:
    cfg = ProbeSettings(grace_period_seconds=1)
    record = feed([U], grace=1)[0]
    assert settle(record, settings=cfg, now=1000.0) == record


def test_is_settled() -> None:
    cfg = ProbeSettings(grace_period_seconds=10)
    initial = HealthRecord.initial(0.0)
    assert not is_settled(initial, settings=cfg, now=9.9)
    assert is_settled(initial, settings=cfg, now=10.0)
    healthy = feed([H])[0]
    assert is_settled(healthy, settings=cfg, now=1.0)
    unhealthy = feed([U])[0]
    assert not is_settled(unhealthy, settings=cfg, now=1.0)
    assert is_settled(unhealthy, settings=cfg, now=10.0)


@pytest.mark.parametrize(
    ("kinds", "n", "expected", "settled"),
    [
        ([U, U, U], 1, [UNHEALTHY] * 3, [False, False, True]),  # the wait ends at the third
        ([U, U, U], 5, [INIT, INIT, UNHEALTHY], [False, False, True]),  # the grace verdict
        # the guest does not answer yet: unreachable results are no failed probes
        ([X, X, X, U, U, U], 5, [INIT] * 5 + [UNHEALTHY], [False] * 5 + [True]),
        ([U, U, H, U, U], 5, [INIT] * 5, [False] * 5),  # in a row only
        ([U, U, X, U], 1, [UNHEALTHY, UNHEALTHY, UNKNOWN, UNHEALTHY], [False] * 4),
        ([U, U, U], 3, [INIT, INIT, UNHEALTHY], [False, False, True]),
    ],
)
def test_fail_fast_ends_the_grace_period_after_failed_probes_in_a_row(
    kinds: list[OutcomeKind], n: int, expected: list[HealthState], settled: list[bool]
) -> None:
    cfg = ProbeSettings(number_of_probes=n, fail_fast_after_probes=3)
    records = feed(kinds, n=n, fail_fast=3)
    assert [r.state for r in records] == expected
    assert [is_settled(r, settings=cfg, now=i + 1.0) for i, r in enumerate(records)] == settled


def test_without_fail_fast_an_unhealthy_instance_waits_out_its_grace_period() -> None:
    cfg = ProbeSettings(grace_period_seconds=300)
    assert cfg.fail_fast_after_probes == 0  # off by default
    records = feed([U] * 100)
    assert all(r.state is UNHEALTHY for r in records)
    assert not any(is_settled(r, settings=cfg, now=i + 1.0) for i, r in enumerate(records))


# --- the state machine: properties ---------------------------------------------------------------

kinds_st = st.lists(st.sampled_from([H, U, X]), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    kinds=kinds_st,
    n=st.integers(min_value=1, max_value=4),
    grace=st.floats(min_value=0.5, max_value=30),
    step=st.floats(min_value=0.1, max_value=5),
)
def test_changes_need_n_equal_results_except_at_grace_end(
    kinds: list[OutcomeKind], n: int, grace: float, step: float
) -> None:
    records = feed(kinds, n=n, grace=grace, step=step)
    previous = HealthRecord.initial(0.0)
    for i, record in enumerate(records):
        now = (i + 1) * step
        if record.state is not previous.state:
            tail = kinds[max(0, i + 1 - n) : i + 1]
            full_streak = len(tail) == n and set(tail) == {kinds[i]}
            grace_rule = previous.state is INIT and now >= grace
            assert full_streak or grace_rule, (kinds[: i + 1], previous.state, record.state)
            if not grace_rule:
                assert record.state is STATE_OF[kinds[i]]
        previous = record


@settings(max_examples=300, deadline=None)
@given(
    kinds=kinds_st,
    n=st.integers(min_value=1, max_value=4),
    grace=st.floats(min_value=0.5, max_value=30),
)
def test_healthy_only_after_n_healthy_in_a_row(
    kinds: list[OutcomeKind], n: int, grace: float
) -> None:
    for i, record in enumerate(feed(kinds, n=n, grace=grace)):
        if record.state is HEALTHY and record.changed_at == i + 1:
            tail = kinds[max(0, i + 1 - n) : i + 1]
            assert tail == [H] * n


@settings(max_examples=300, deadline=None)
@given(kinds=kinds_st, n=st.integers(min_value=1, max_value=4))
def test_never_back_to_initializing(kinds: list[OutcomeKind], n: int) -> None:
    left = False
    for record in feed(kinds, n=n, grace=5):
        left = left or record.state is not INIT
        assert not (left and record.state is INIT)


@settings(max_examples=300, deadline=None)
@given(
    kinds=kinds_st,
    grace=st.floats(min_value=0.5, max_value=30),
    extra=st.lists(st.floats(min_value=0, max_value=100), max_size=5),
)
def test_is_settled_is_monotone_once_grace_ended(
    kinds: list[OutcomeKind], grace: float, extra: list[float]
) -> None:
    cfg = ProbeSettings(grace_period_seconds=grace)
    for i, record in enumerate(feed(kinds, grace=grace)):
        now = i + 1.0
        if now >= grace:
            assert is_settled(record, settings=cfg, now=now)
            for later in extra:
                assert is_settled(record, settings=cfg, now=now + later)
        # after grace, nothing is left INITIALIZING once a probe or settle has run
        assert record.state is not INIT or now < grace
        assert settle(record, settings=cfg, now=max(now, grace)).state is not INIT


# --- the probe loops on virtual time -------------------------------------------------------------


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(scenario(), timeout=5)

    return asyncio.run(bounded())


@dataclass
class ScriptedProber:
    """Answers by virtual time since ``t0``: a function per target name → kind (or a hang)."""

    clock: FakeClock
    t0: float
    scripts: dict[str, Callable[[float], str]]
    latency: float = 0.05
    calls: dict[str, list[float]] = field(default_factory=dict)

    async def probe(self, target: ProbeTarget, settings: ProbeSettings) -> ProbeOutcome:
        elapsed = self.clock.monotonic() - self.t0
        self.calls.setdefault(target.name, []).append(elapsed)
        kind = self.scripts[target.name](elapsed)
        if kind == "security":
            raise errors.SecurityError("host key differs from the pinned one")
        if kind == "hang":
            await self.clock.sleep(10_000)
        await self.clock.sleep(self.latency)
        return ProbeOutcome(
            at=self.clock.now(),
            kind=kind,  # type: ignore[arg-type]
            exit_status={"healthy": 0, "unhealthy": 1}.get(str(kind)),
            latency=self.latency,
            output="",
            error=None if kind != X else "refused",
        )


def targets(*names: str) -> list[ProbeTarget]:
    return [ProbeTarget(name=name, endpoint=None) for name in names]


def ready_at(t: float) -> Callable[[float], str]:
    return lambda elapsed: H if elapsed >= t else X


def test_target_ready_at_7s_is_healthy_by_8s_virtual_time() -> None:
    clock = FakeClock()
    t0 = clock.monotonic()
    prober = ScriptedProber(clock, t0, {"a": ready_at(7.0)})
    cfg = ProbeSettings(interval_seconds=5, grace_period_seconds=300)
    started = time.monotonic()

    result = run(lambda: wait_settled(targets("a"), {}, prober=prober, settings=cfg, clock=clock))

    assert time.monotonic() - started < 1.0
    assert result["a"].state is HEALTHY
    assert result["a"].changed_at is not None
    assert 7.0 <= result["a"].changed_at - t0 <= 8.2
    # probed about once a second while booting, not every interval_seconds
    assert len(prober.calls["a"]) >= 7


def test_never_reachable_target_is_unknown_exactly_at_grace_end() -> None:
    clock = FakeClock()
    t0 = clock.monotonic()
    prober = ScriptedProber(clock, t0, {"a": lambda _: X})
    # Probes fall on whole seconds while booting; the grace end falls between two of them.
    cfg = ProbeSettings(grace_period_seconds=120.5)

    result = run(lambda: wait_settled(targets("a"), {}, prober=prober, settings=cfg, clock=clock))

    assert result["a"].state is UNKNOWN
    assert result["a"].changed_at == pytest.approx(t0 + 120.5, abs=1e-6)
    assert clock.monotonic() == pytest.approx(t0 + 120.5, abs=1e-6)


def test_failing_health_target_becomes_unhealthy_after_n_probes() -> None:
    clock = FakeClock()
    t0 = clock.monotonic()
    prober = ScriptedProber(clock, t0, {"a": lambda _: U})
    cfg = ProbeSettings(number_of_probes=3, interval_seconds=5, grace_period_seconds=60)
    changes: list[tuple[str, HealthState, float]] = []

    def on_change(name: str, record: HealthRecord) -> None:
        changes.append((name, record.state, clock.monotonic() - t0))

    result = run(
        lambda: wait_settled(
            targets("a"), {}, prober=prober, settings=cfg, clock=clock, on_change=on_change
        )
    )

    assert result["a"].state is UNHEALTHY
    assert [(n, s) for n, s, _ in changes] == [("a", UNHEALTHY)]
    assert 2.0 <= changes[0][2] < 3.0  # third probe, one second apart while INITIALIZING
    # once settled as Unhealthy it is probed every interval_seconds until the grace ends
    later = [t for t in prober.calls["a"] if t > changes[0][2]]
    gaps = [b - a for a, b in itertools.pairwise(later)]
    assert gaps and all(g == pytest.approx(5.0) for g in gaps)


def test_targets_are_probed_concurrently() -> None:
    clock = FakeClock()
    t0 = clock.monotonic()
    prober = ScriptedProber(
        clock, t0, {"a": ready_at(3.0), "b": ready_at(10.0), "c": ready_at(20.0)}
    )
    cfg = ProbeSettings(grace_period_seconds=300)
    changes: list[tuple[str, HealthState]] = []

    result = run(
        lambda: wait_settled(
            targets("a", "b", "c"),
            {},
            prober=prober,
            settings=cfg,
            clock=clock,
            on_change=lambda name, record: changes.append((name, record.state)),
        )
    )

    assert {name: r.state for name, r in result.items()} == dict.fromkeys("abc", HEALTHY)
    assert changes == [("a", HEALTHY), ("b", HEALTHY), ("c", HEALTHY)]
    assert clock.monotonic() - t0 < 21.5  # the longest wait, not the sum of them


def test_hanging_probe_is_cut_at_the_probe_timeout() -> None:
    clock = FakeClock()
    t0 = clock.monotonic()
    prober = ScriptedProber(clock, t0, {"a": lambda _: "hang"})
    cfg = ProbeSettings(timeout_seconds=4, grace_period_seconds=30)

    result = run(lambda: wait_settled(targets("a"), {}, prober=prober, settings=cfg, clock=clock))

    assert result["a"].state is UNKNOWN
    assert result["a"].last is not None and "did not finish within 4s" in str(
        result["a"].last.error
    )
    calls = prober.calls["a"]
    assert all(b - a == pytest.approx(4.0) for a, b in itertools.pairwise(calls))


def test_deadline_ends_the_wait_before_grace() -> None:
    clock = FakeClock()
    t0 = clock.monotonic()
    prober = ScriptedProber(clock, t0, {"a": lambda _: X, "b": ready_at(2.0)})
    cfg = ProbeSettings(grace_period_seconds=300)

    result = run(
        lambda: wait_settled(
            targets("a", "b"), {}, prober=prober, settings=cfg, clock=clock, deadline=t0 + 10
        )
    )

    assert result["a"].state is INIT
    assert result["b"].state is HEALTHY
    assert clock.monotonic() - t0 == pytest.approx(10.0, abs=0.1)


def test_existing_records_keep_their_boot_time() -> None:
    clock = FakeClock()
    t0 = clock.monotonic()
    booted_long_ago = HealthRecord.initial(t0 - 290)
    prober = ScriptedProber(clock, t0, {"a": lambda _: X})
    cfg = ProbeSettings(grace_period_seconds=300)

    result = run(
        lambda: wait_settled(
            targets("a"), {"a": booted_long_ago}, prober=prober, settings=cfg, clock=clock
        )
    )

    assert result["a"].state is UNKNOWN
    assert result["a"].changed_at == pytest.approx(t0 + 10, abs=1e-6)


def test_security_error_stops_the_whole_wait() -> None:
    clock = FakeClock()
    t0 = clock.monotonic()
    prober = ScriptedProber(
        clock, t0, {"a": lambda _: X, "b": lambda t: "security" if t > 3 else X}
    )
    cfg = ProbeSettings(grace_period_seconds=300)

    with pytest.raises(errors.SecurityError):
        run(lambda: wait_settled(targets("a", "b"), {}, prober=prober, settings=cfg, clock=clock))
    assert clock.monotonic() - t0 < 10


def test_probe_once_runs_one_round() -> None:
    clock = FakeClock()
    t0 = clock.monotonic()
    prober = ScriptedProber(clock, t0, {"a": lambda _: H, "b": lambda _: U, "c": lambda _: X})
    cfg = ProbeSettings(number_of_probes=2)
    before = {"a": feed([H], n=2)[0]}  # one healthy already seen: the next makes two

    result = run(
        lambda: probe_once(targets("a", "b", "c"), before, prober=prober, settings=cfg, clock=clock)
    )

    assert {n: r.state for n, r in result.items()} == {"a": HEALTHY, "b": INIT, "c": INIT}
    assert {n: len(c) for n, c in prober.calls.items()} == {"a": 1, "b": 1, "c": 1}


def test_a_long_wait_says_every_30s_how_much_grace_is_left_not_every_probe() -> None:
    clock = FakeClock()
    t0 = clock.monotonic()
    # a broken image: SSH answers after 6 s, the health command fails from then on
    prober = ScriptedProber(clock, t0, {"a": lambda t: U if t >= 6 else X})
    cfg = ProbeSettings(interval_seconds=5, grace_period_seconds=300)
    changes: list[tuple[HealthState, float]] = []
    waiting: list[tuple[str, HealthState, float, float]] = []

    result = run(lambda: wait_settled(
        targets("a"), {}, prober=prober, settings=cfg, clock=clock,
        on_change=lambda name, rec: changes.append((rec.state, clock.monotonic() - t0)),
        on_waiting=lambda name, rec, left: waiting.append(
            (name, rec.state, clock.monotonic() - t0, left))))

    assert result["a"].state is UNHEALTHY
    assert changes[0][0] is UNHEALTHY and 6 <= changes[0][1] < 7.5
    # the wait goes on until the grace period ends, and says so twice a minute meanwhile
    assert [w[0] for w in waiting] == ["a"] * 9
    at = [w[2] for w in waiting]
    assert all(30 * (k + 1) <= t < 30 * (k + 1) + 5.5 for k, t in enumerate(at)), at
    assert [w[1] for w in waiting] == [UNHEALTHY] * 9
    assert all(left == pytest.approx(300 - t) for t, left in zip(at, [w[3] for w in waiting]))
    assert len(prober.calls["a"]) > 5 * len(waiting)  # far fewer lines than probes


def test_a_short_wait_says_nothing_while_waiting() -> None:
    clock = FakeClock()
    prober = ScriptedProber(clock, clock.monotonic(), {"a": ready_at(7.0)})
    waiting: list[str] = []
    run(lambda: wait_settled(targets("a"), {}, prober=prober, settings=ProbeSettings(),
                             clock=clock, on_waiting=lambda name, rec, left: waiting.append(name)))
    assert waiting == []


def test_fail_fast_ends_the_wait_after_that_many_failed_probes_once_ssh_answers() -> None:
    clock = FakeClock()
    t0 = clock.monotonic()
    prober = ScriptedProber(clock, t0, {"a": lambda t: U if t >= 20 else X})
    cfg = ProbeSettings(interval_seconds=5, number_of_probes=1, grace_period_seconds=300,
                        fail_fast_after_probes=3)

    result = run(lambda: wait_settled(targets("a"), {}, prober=prober, settings=cfg, clock=clock))

    assert result["a"].state is UNHEALTHY
    # SSH answers at 20 s: Unhealthy at once, then two more failed probes 5 s apart
    assert 30 <= clock.monotonic() - t0 < 31
    assert [t for t in prober.calls["a"] if t >= 20] == pytest.approx([20, 25, 30], abs=0.5)

def test_probe_once_cuts_a_hanging_probe_at_the_timeout_and_keeps_the_others() -> None:
    clock = FakeClock()
    t0 = clock.monotonic()
    prober = ScriptedProber(clock, t0, {"a": lambda _: H, "b": lambda _: "hang"})
    cfg = ProbeSettings(timeout_seconds=4, number_of_probes=1)

    result = run(lambda: probe_once(targets("a", "b"), {}, prober=prober, settings=cfg, clock=clock))

    assert result["a"].state is HEALTHY
    assert result["a"].changed_at == pytest.approx(t0 + 0.05)  # when its own answer came
    last = result["b"].last
    assert result["b"].state is INIT and last is not None and last.kind == X
    assert last.error == "probe did not finish within 4s"
    assert last.latency == pytest.approx(4.0)
    assert clock.monotonic() == pytest.approx(t0 + 4.0)  # the round ends at the cut


def test_probe_once_of_no_target_returns_at_once() -> None:
    clock = FakeClock()
    prober = ScriptedProber(clock, clock.monotonic(), {})
    before = clock.monotonic()

    assert run(lambda: probe_once([], {}, prober=prober, settings=ProbeSettings(),
                                  clock=clock)) == {}
    assert clock.monotonic() == before


def test_security_error_stops_the_round() -> None:
    clock = FakeClock()
    t0 = clock.monotonic()
    prober = ScriptedProber(clock, t0, {"a": lambda _: "hang", "b": lambda _: "security"})

    with pytest.raises(errors.SecurityError):
        run(lambda: probe_once(targets("a", "b"), {}, prober=prober,
                               settings=ProbeSettings(timeout_seconds=30), clock=clock))
    assert clock.monotonic() - t0 < 1  # not held up by the hanging probe
