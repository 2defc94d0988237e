"""Riding out a hypervisor daemon that goes away for a while (libvirtd restarted).

Owned here: ``Retrying``, a ``Hypervisor`` that forwards every call to another one and, when
the call fails with ``HypervisorUnavailable`` (a temporary error) after the daemon has been
reached once, waits with exponential backoff and tries again, until ``give_up_after``
seconds have passed; then the error stands. A daemon never reached fails at once: that is
"libvirtd is not running", which a wait would only hide.
Called by: cli.app (around the libvirt adapter, whose connection reopens itself when it died)
Every protocol verb is idempotent, so repeating one whose reply was lost is safe.

Every verb of ``base.VERBS`` is a method of its own here, typed as in the protocol (so mypy
checks ``Retrying`` against ``Hypervisor``), and each goes through ``_call``. The back-off
waits with the injected clock's blocking ``pause``: hypervisor calls run in worker threads,
so a retry holds up only its own worker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from orchestrator.clock import Clock
from orchestrator.errors import HypervisorUnavailable
from orchestrator.hypervisor.base import (
    DomainInfo,
    HostInfo,
    Hypervisor,
    NetworkInfo,
    PoolInfo,
    PowerState,
    Reservation,
    VolumeInfo,
)
from orchestrator.hypervisor.domainxml import Domain, Ownership

__all__ = ["Retrying"]

P = ParamSpec("P")
T = TypeVar("T")


class Retrying:
    """``Hypervisor`` around ``inner``: unavailable-daemon errors retried with back-off."""

    def __init__(self, inner: Hypervisor, *, clock: Clock, give_up_after: float = 60.0,
                 first_delay: float = 0.5, max_delay: float = 8.0,
                 log: Callable[[str], None] = lambda line: None) -> None:
        self._inner = inner
        self._clock = clock
        self._give_up_after = give_up_after
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._log = log
        self._reached = False

    @property
    def uri(self) -> str:
        return self._inner.uri

    def _call(self, verb: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``verb(*args, **kwargs)``, retried while the daemon is away (see the module)."""
        deadline = self._clock.monotonic() + self._give_up_after
        delay = self._first_delay
        while True:
            try:
                result = verb(*args, **kwargs)
            except HypervisorUnavailable as exc:
                if not self._reached or self._clock.monotonic() + delay > deadline:
                    raise
                name = getattr(verb, "__name__", "call")
                self._log(f"libvirt unavailable ({exc.message}); retrying {name} in "
                          f"{delay:.1f}s")
                self._clock.pause(delay)
                delay = min(delay * 2, self._max_delay)
            else:
                self._reached = True
                return result

    # --- domains ---------------------------------------------------------------------------
    def define_domain(self, domain: Domain) -> None:
        return self._call(self._inner.define_domain, domain)

    def start(self, name: str) -> None:
        return self._call(self._inner.start, name)

    def shutdown(self, name: str) -> None:
        return self._call(self._inner.shutdown, name)

    def destroy(self, name: str) -> None:
        return self._call(self._inner.destroy, name)

    def undefine(self, name: str) -> None:
        return self._call(self._inner.undefine, name)

    def domain_state(self, name: str) -> PowerState:
        return self._call(self._inner.domain_state, name)

    def domain_owner(self, name: str) -> Ownership | None:
        return self._call(self._inner.domain_owner, name)

    def list_domains(self) -> list[DomainInfo]:
        return self._call(self._inner.list_domains)

    # --- storage ---------------------------------------------------------------------------
    def pool_info(self, pool: str) -> PoolInfo:
        return self._call(self._inner.pool_info, pool)

    def create_overlay(
        self, pool: str, *, name: str, backing_path: str, backing_format: str, capacity_bytes: int
    ) -> VolumeInfo:
        return self._call(self._inner.create_overlay, pool, name=name, backing_path=backing_path,
                          backing_format=backing_format, capacity_bytes=capacity_bytes)

    def create_volume(self, pool: str, *, name: str, capacity_bytes: int) -> VolumeInfo:
        return self._call(self._inner.create_volume, pool, name=name, capacity_bytes=capacity_bytes)

    def upload_volume(self, pool: str, *, name: str, data: bytes, fmt: str = "raw") -> VolumeInfo:
        return self._call(self._inner.upload_volume, pool, name=name, data=data, fmt=fmt)

    def upload_file(self, pool: str, *, name: str, path: str, fmt: str, sha256: str) -> VolumeInfo:
        return self._call(self._inner.upload_file, pool, name=name, path=path, fmt=fmt,
                          sha256=sha256)

    def delete_volume(self, pool: str, name: str) -> None:
        return self._call(self._inner.delete_volume, pool, name)

    def list_volumes(self, pool: str) -> list[VolumeInfo]:
        return self._call(self._inner.list_volumes, pool)

    def read_volume_tail(self, pool: str, name: str, *, max_bytes: int) -> bytes:
        return self._call(self._inner.read_volume_tail, pool, name, max_bytes=max_bytes)

    def find_volume(self, pool: str, name: str) -> VolumeInfo | None:
        return self._call(self._inner.find_volume, pool, name)

    # --- network ---------------------------------------------------------------------------
    def network_info(self, network: str) -> NetworkInfo:
        return self._call(self._inner.network_info, network)

    def list_reservations(self, network: str) -> list[Reservation]:
        return self._call(self._inner.list_reservations, network)

    def leased_addresses(self, network: str) -> dict[str, str]:
        return self._call(self._inner.leased_addresses, network)

    def add_reservation(self, network: str, reservation: Reservation) -> None:
        return self._call(self._inner.add_reservation, network, reservation)

    def remove_reservation(self, network: str, reservation: Reservation) -> None:
        return self._call(self._inner.remove_reservation, network, reservation)

    # --- host ------------------------------------------------------------------------------
    def host_info(self) -> HostInfo:
        return self._call(self._inner.host_info)

    def close(self) -> None:
        return self._call(self._inner.close)
