"""``Clock.pause``: the blocking wait of code that runs in a worker thread."""

from __future__ import annotations

import asyncio
import time

from orchestrator.clock import Clock, FakeClock, RealClock


def test_fake_pause_advances_time_at_once() -> None:
    clock = FakeClock(start=100.0)
    started = time.monotonic()
    clock.pause(3600.0)
    assert clock.monotonic() == 3700.0
    assert clock.now().timestamp() == 3700.0
    clock.pause(-5.0)  # never backwards
    assert clock.monotonic() == 3700.0
    assert time.monotonic() - started < 1.0


def test_fake_pause_lets_a_pending_sleeper_wake() -> None:
    clock = FakeClock(start=0.0)

    async def main() -> float:
        async def sleeper() -> float:
            await clock.sleep(10.0)
            return clock.monotonic()

        task = asyncio.create_task(sleeper())
        await asyncio.sleep(0)
        clock.pause(30.0)  # e.g. a worker thread's retry back-off
        return await task

    assert asyncio.run(main()) == 30.0


def test_real_pause_blocks_the_thread() -> None:
    clock: Clock = RealClock()
    started = time.monotonic()
    clock.pause(0.05)
    assert time.monotonic() - started >= 0.05
    started = time.monotonic()
    clock.pause(-1.0)  # a negative pause is none
    assert time.monotonic() - started < 0.05
