"""The injectable clock: the only place real time is read or waited on.

Owned here: ``Clock`` (the protocol), ``RealClock`` and ``FakeClock``.
Called by: api.operations, api.serve, cli.app, cli.images, cli.labcmds, cli.render,
dryrun.simworld, engine.context, engine.health, engine.simulate, hypervisor.fake,
hypervisor.retry, ssh, usecases.session, usecases.watch
Its users wait through it for health grace periods, probe intervals, timeouts and time stamps. Tests and dry
runs inject ``FakeClock`` so minutes-long timeouts pass in milliseconds.

Two ways to wait: ``await sleep`` on the event loop, and ``pause``, which blocks the calling
thread, for code that runs in a worker thread (the hypervisor calls, and so the retries of
one), where it holds up only that worker.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import heapq
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> _dt.datetime:
        """Wall-clock time, timezone-aware UTC (for records shown to users)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a monotonic scale (for deadlines and durations)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on the event loop."""
        ...

    def pause(self, seconds: float) -> None:
        """Block the calling thread for ``seconds`` (worker threads only, never the loop)."""
        ...


class RealClock:
    def now(self) -> _dt.datetime:
        return _dt.datetime.now(_dt.UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def pause(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


class FakeClock:
    """Virtual time for tests: time moves only when every task is waiting on the clock.

    Each ``sleep`` registers a deadline; a background advancer lets all runnable tasks reach
    their next wait, then jumps to the earliest deadline and wakes that sleeper. Concurrent
    sleeps therefore overlap as they would in real time, in milliseconds of real time.
    """

    _SETTLE_ROUNDS = 20

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._t = start
        self._seq = 0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._advancer: asyncio.Task[None] | None = None

    def now(self) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(self._t, tz=_dt.UTC)

    def monotonic(self) -> float:
        return self._t

    def advance(self, seconds: float) -> None:
        self._t += max(0.0, seconds)

    def pause(self, seconds: float) -> None:
        """Virtual time moves on at once (nothing blocks); sleepers whose deadline it passes
        wake at their next turn."""
        self.advance(seconds)

    async def sleep(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._sleepers, (self._t + max(0.0, seconds), self._seq, fut))
        self._seq += 1
        if self._advancer is None or self._advancer.done():
            self._advancer = loop.create_task(self._advance())
        await fut

    async def _advance(self) -> None:
        while self._sleepers:
            for _ in range(self._SETTLE_ROUNDS):
                await asyncio.sleep(0)
            if not self._sleepers:
                return
            deadline, _, fut = heapq.heappop(self._sleepers)
            self._t = max(self._t, deadline)
            if not fut.done():
                fut.set_result(None)
            # every sleeper due at the same instant wakes with it (in the order they slept)
            while self._sleepers and self._sleepers[0][0] == deadline:
                _, _, more = heapq.heappop(self._sleepers)
                if not more.done():
                    more.set_result(None)


def iso(ts: _dt.datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, second precision: how times appear in output."""
    return ts.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
