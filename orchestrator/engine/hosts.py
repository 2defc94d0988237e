"""The hosts a controller drives, and one hypervisor connection each.

Owned here: ``Host`` (a libvirt daemon as the steps see it: name, URI, fault domain, the
network and pool to use there, Ready or Cordoned), ``LOCAL`` (the implicit host when none is
registered: ``--libvirt-uri``, the model's network, the configured pool), and ``Fleet``
(the registered hosts from the store, each with its own connection, opened on first use by
the ``connect`` function the caller gives: the real adapter in the product, fakes in tests).

With no host registered, everything runs on the implicit host ``local`` exactly as a
single-host controller does; an instance records the host it lives on.

Called by: cli.app, dryrun.simworld, engine.context, usecases.bootdiag, usecases.hosts,
usecases.placement, usecases.rolling
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.errors import NotFound
from orchestrator.hypervisor.base import Hypervisor
from orchestrator.store import HostRecord, Store

LOCAL = "local"
READY = "Ready"
CORDONED = "Cordoned"


@dataclass(frozen=True)
class Host:
    name: str
    uri: str
    fault_domain: str
    network: str | None  # None: the model's network (the implicit host)
    pool: str
    state: str = READY
    registered: bool = False

    @classmethod
    def of(cls, rec: HostRecord) -> Host:
        return cls(rec.name, rec.uri, rec.fault_domain, rec.network, rec.pool, rec.state, True)

    def network_for(self, model_network: str) -> str:
        return self.network if self.network is not None else model_network


class Fleet:
    """The controller's hosts, each with its own hypervisor connection."""

    def __init__(self, store: Store, *, local: Hypervisor, local_uri: str, local_pool: str,
                 connect: Callable[[str], Hypervisor] | None = None) -> None:
        self._store = store
        self._local = Host(LOCAL, local_uri, LOCAL, None, local_pool)
        self._connect = connect
        self._open: dict[str, Hypervisor] = {LOCAL: local}

    def hosts(self) -> list[Host]:
        """The registered hosts, and the implicit local one while none is registered or
        instances still live on it (made before the first host was registered)."""
        registered = [Host.of(r) for r in self._store.list_hosts()]
        if not registered or (LOCAL not in {h.name for h in registered}
                              and LOCAL in self._store.hosts_in_use()):
            return [*registered, self._local]
        return registered

    @property
    def registered(self) -> bool:
        """Whether any host is registered (placement spreads over hosts only then)."""
        return bool(self._store.list_hosts())

    def host(self, name: str) -> Host:
        if name == LOCAL and self._store.find_host(LOCAL) is None:
            return self._local
        rec = self._store.find_host(name)
        if rec is None:
            raise NotFound(f"host {name} is not registered (see `orch host list`)")
        return Host.of(rec)

    def hv(self, name: str) -> Hypervisor:
        """The connection to host ``name``, opened on first use."""
        if name not in self._open:
            host = self.host(name)
            if self._connect is None:
                raise NotFound(f"no way to reach host {name} ({host.uri}) in this world")
            self._open[name] = self._connect(host.uri)
        return self._open[name]

    def connect(self, uri: str) -> Hypervisor:
        """A connection to a host not registered yet (``host add`` checks it first)."""
        if self._connect is None:
            raise NotFound(f"no way to reach {uri} in this world")
        return self._connect(uri)

    def close(self) -> None:
        """Close every connection this fleet opened, the local one too (``orch serve``
        closes each call's)."""
        for hv in self._open.values():
            hv.close()
        self._open = {}

    def forget(self, name: str) -> None:
        hv = self._open.pop(name, None)
        if hv is not None and name != LOCAL:
            hv.close()
