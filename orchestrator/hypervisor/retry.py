"""Riding out a hypervisor daemon that goes away for a while (libvirtd restarted).

Owned here: ``Retrying``, a ``Hypervisor`` that forwards every call to another one and, when
the call fails with ``HypervisorUnavailable`` (a temporary error) after the daemon has been
reached once, waits with exponential backoff and tries again, until ``give_up_after``
seconds have passed; then the error stands. A daemon never reached fails at once: that is
"libvirtd is not running", which a wait would only hide.
Called by: cli.app (around the libvirt adapter, whose connection reopens itself when it died)
Every protocol verb is idempotent, so repeating one whose reply was lost is safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from orchestrator.errors import HypervisorUnavailable
from orchestrator.hypervisor.base import Hypervisor


class Retrying:
    def __init__(self, inner: Hypervisor, *, give_up_after: float = 60.0,
                 first_delay: float = 0.5, max_delay: float = 8.0,
                 sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] = lambda line: None) -> None:
        self._inner = inner
        self._give_up_after = give_up_after
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._sleep = sleep
        self._monotonic = monotonic
        self._log = log
        self._reached = False

    @property
    def uri(self) -> str:
        return self._inner.uri

    def __getattr__(self, verb: str) -> Any:
        target = getattr(self._inner, verb)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            deadline = self._monotonic() + self._give_up_after
            delay = self._first_delay
            while True:
                try:
                    result = target(*args, **kwargs)
                except HypervisorUnavailable as exc:
                    if not self._reached or self._monotonic() + delay > deadline:
                        raise
                    self._log(f"libvirt unavailable ({exc.message}); retrying {verb} in "
                              f"{delay:.1f}s")
                    self._sleep(delay)
                    delay = min(delay * 2, self._max_delay)
                else:
                    self._reached = True
                    return result
        return call
