"""libvirt's default event loop, registered once per process and run by one daemon thread.

Owned here: ``EventLoop``. libvirt's keepalive (``virConnectSetKeepAlive``) needs an event
loop: without one, ``setKeepAlive`` is refused ("the caller doesn't support keepalive
protocol; perhaps it's missing event loop implementation") and a call to a host that
silently drops packets hangs for as long as TCP keeps trying. ``ensure`` registers
``virEventRegisterDefaultImpl`` (which must happen before a connection is opened; a
connection opened earlier never gets keepalive) and starts one daemon thread running
``virEventRunDefaultImpl`` forever. It is idempotent and thread-safe: the first caller
registers, every later one returns at once.
Called by: hypervisor.libvirt (which owns the process's one instance and hands it the
``libvirt`` module; this module never imports libvirt, so the rule is tested with a stand-in)
"""

from __future__ import annotations

import threading
from typing import Protocol

__all__ = ["EventImpl", "EventLoop"]


class EventImpl(Protocol):
    """What this loop uses of the ``libvirt`` module: two functions and its error type."""

    libvirtError: type[Exception]

    def virEventRegisterDefaultImpl(self) -> object: ...

    def virEventRunDefaultImpl(self) -> object: ...


class EventLoop:
    """The process's libvirt event loop: registered on first ``ensure``, then run forever."""

    def __init__(self, lib: EventImpl, *, thread_name: str = "libvirt-event-loop") -> None:
        self._lib = lib
        self._thread_name = thread_name
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.errors = 0
        """Iterations of the loop that failed (each is followed by a short wait)."""

    @property
    def registered(self) -> bool:
        return self._thread is not None

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def ensure(self) -> None:
        """Register the default implementation and start its thread, once per process."""
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is not None:
                return
            self._lib.virEventRegisterDefaultImpl()
            thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
            thread.start()
            self._thread = thread

    def _run(self) -> None:
        pause = threading.Event()  # never set: a wait that only times out
        while True:
            try:
                self._lib.virEventRunDefaultImpl()
            except self._lib.libvirtError:  # the loop must outlive any one iteration
                self.errors += 1
                pause.wait(0.05)  # no hot spin if libvirt keeps failing
