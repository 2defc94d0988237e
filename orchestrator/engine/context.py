"""The context every per-instance step is handed, and the step journal.

Owned here: ``Settings`` (pool, domain type, timeouts), ``Engine`` (the collaborators of a
step: hypervisor, store, registry, clock, settings, how blocking hypervisor calls leave the
event loop, the journal's current operation, the image copies found so far), ``Engine.io`` (every hypervisor call of an
async step goes through it), and the step journal (``Engine.step``, ``journaled``): a step
is written ``started`` before it acts and ``done``/``failed`` after, so a step left
``started`` names where a killed process stopped.

Called by: cli.app, dryrun.simworld, engine.addresses, engine.copies, engine.steps,
usecases.placement, usecases.session
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from orchestrator.clock import Clock, iso
from orchestrator.engine.copies import Copies
from orchestrator.engine.hosts import LOCAL, Fleet, Host
from orchestrator.errors import OrchError
from orchestrator.hypervisor.base import Hypervisor
from orchestrator.images import Registry
from orchestrator.store import InstanceRecord, Store

_P = ParamSpec("_P")
_R = TypeVar("_R")

# How a blocking call leaves the event loop: ``threads`` in the product (libvirt calls block,
# and a libvirtd being restarted makes them block for long), ``inline`` with the fake
# hypervisor, whose calls return at once and whose time is the fake clock's alone.
Offload = Callable[[Callable[[], _R]], Awaitable[_R]]


async def threads(fn: Callable[[], _R]) -> _R:
    return await asyncio.to_thread(fn)


async def inline(fn: Callable[[], _R]) -> _R:
    return fn()


@dataclass(frozen=True)
class Where:
    """One host and its connection."""

    host: Host
    hv: Hypervisor

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def pool(self) -> str:
        return self.host.pool


__all__ = ["LOCAL", "Engine", "Settings", "Where", "inline", "journaled", "one_line", "threads"]


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
    offload: Callable[[Callable[[], object]], Awaitable[object]] = threads
    # the journal's operation the steps taken now belong to (set by ``usecases.session``)
    operation_id: int | None = None
    # the hosts; None: one host, ``hv`` (tests and dry runs without hosts)
    fleet: Fleet | None = None
    # the images' copies on the hosts this command found or made (``engine.copies``)
    copies: Copies = field(default_factory=Copies)

    def __post_init__(self) -> None:
        if self.fleet is None:
            self.fleet = Fleet(self.store, local=self.hv, local_uri=self.hv.uri,
                               local_pool=self.settings.pool)

    def close(self) -> None:
        """Close the hypervisor connections and the store connection of this engine."""
        assert self.fleet is not None
        try:
            self.fleet.close()
        finally:
            self.store.close()

    def at(self, host: str) -> Where:
        """Host ``host`` as a step sees it: its connection, pool and fault domain."""
        assert self.fleet is not None
        h = self.fleet.host(host)
        return Where(h, self.fleet.hv(host))

    def hosts(self) -> list[Where]:
        assert self.fleet is not None
        return [Where(h, self.fleet.hv(h.name)) for h in self.fleet.hosts()]

    def now(self) -> str:
        return iso(self.clock.now())

    async def io(self, fn: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Run one blocking hypervisor call off the event loop."""
        result = await self.offload(functools.partial(fn, *args, **kwargs))
        return result  # type: ignore[return-value]

    # --- the step journal ------------------------------------------------------------------
    def open_step(self, inst: InstanceRecord, name: str) -> int | None:
        """Journal the start of one step on one instance, before it acts (None: no
        operation is being journaled)."""
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
            self.store.end_step(step_id, "failed", error=one_line(error), now=self.now())

    @contextlib.contextmanager
    def step(self, inst: InstanceRecord, name: str) -> Iterator[None]:
        """One journaled step around a block."""
        step_id = self.open_step(inst, name)
        try:
            yield
        except GeneratorExit:
            raise  # the coroutine is being discarded with its process: leave it started
        except asyncio.CancelledError:
            raise  # likewise: the step did not end, its process is going
        except BaseException as exc:
            self.close_step(step_id, exc)
            raise
        self.close_step(step_id)


def one_line(exc: BaseException) -> str:
    return exc.one_line() if isinstance(exc, OrchError) else type(exc).__name__


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
