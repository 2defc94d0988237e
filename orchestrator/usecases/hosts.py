"""The hosts of the controller: ``orch host add|list|show|cordon|uncordon|remove``.

Owned here: what ``add`` checks before a host is registered (its name and URI, then that the
daemon answers, that it offers the engine's domain type, that the network and pool exist
there; nothing is recorded if any fails),
the observed state of a host (Ready, Cordoned, or Unreachable when its daemon does not
answer), its room (``HostView``), and the refusal to remove a host that holds instances.

Called by: api.routes, cli.hosts, cli.labcmds, cli.render
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.engine import copies
from orchestrator.engine.addresses import free_addresses
from orchestrator.engine.hosts import CORDONED, LOCAL, READY, Host
from orchestrator.errors import EnvironmentProblem, Gone, HypervisorUnavailable, InvalidInput
from orchestrator.model import NETWORK_NAME_RE, SET_NAME_RE
from orchestrator.store import HostRecord, Store
from orchestrator.usecases.session import Env

UNREACHABLE = "Unreachable"
_URI_RE = re.compile(r"^(qemu(\+(ssh|tls|tcp|unix))?|test)://[A-Za-z0-9._@:\[\]/-]*"
                     r"/(system|session|default)(\?[A-Za-z0-9._=&/-]*)?$")


@dataclass(frozen=True)
class HostView:
    name: str
    uri: str
    fault_domain: str
    network: str | None
    pool: str
    state: str
    instances: int
    memory_mib_free: int | None
    pool_bytes_free: int | None
    addresses_free: int | None


def _check_name(name: str) -> None:
    if not SET_NAME_RE.fullmatch(name):
        raise InvalidInput(f"invalid host name {name!r}: a-z, 0-9, '-', starting with a letter, "
                           "up to 40")


async def add(env: Env, *, name: str, uri: str, fault_domain: str | None, network: str,
              pool: str) -> HostView:
    _check_name(name)
    if fault_domain is not None and not SET_NAME_RE.fullmatch(fault_domain):
        raise InvalidInput(f"invalid fault domain {fault_domain!r}: a-z, 0-9, '-', starting "
                           "with a letter, up to 40")
    if not _URI_RE.fullmatch(uri):
        raise InvalidInput(f"invalid libvirt URI {uri!r}: expected qemu:///system, "
                           "qemu+ssh://USER@HOST/system, qemu+tls://HOST/system or (in the lab) "
                           "qemu+tcp://ADDRESS/system")
    if not NETWORK_NAME_RE.fullmatch(network) or not NETWORK_NAME_RE.fullmatch(pool):
        raise InvalidInput(f"invalid network or pool name {network!r} / {pool!r}")
    if env.store.find_host(name) is not None:
        raise InvalidInput(f"host {name} is already registered")
    assert env.engine.fleet is not None
    try:
        hv = env.engine.fleet.connect(uri)
        await env.engine.io(hv.list_domains)
    except HypervisorUnavailable as exc:
        raise EnvironmentProblem(f"host {name}: cannot reach libvirt at {uri}: {exc.message}",
                                 hint="check the URI, the daemon and the keys or "
                                      "certificates (README: Several hosts)") from exc
    try:
        wanted = env.engine.settings.domain_type
        offered = (await env.engine.io(hv.host_info)).domain_types
        if wanted not in offered:
            # every instance would be defined there and fail at its first start
            raise InvalidInput(f"host {name}: domain type {wanted} is not offered there "
                               f"(it offers {', '.join(offered) or 'none'} for x86_64 guests)")
        try:
            await env.engine.io(hv.network_info, network)
        except Gone as exc:
            raise InvalidInput(f"host {name}: network {network} does not exist there") from exc
        try:
            await env.engine.io(hv.pool_info, pool)
        except Gone as exc:
            raise InvalidInput(f"host {name}: storage pool {pool} does not exist there") from exc
    finally:
        hv.close()
    env.store.add_host(HostRecord(name=name, uri=uri, fault_domain=fault_domain or name,
                                  network=network, pool=pool, state=READY,
                                  created_at=env.engine.now()))
    return await show(env, name)


async def _view(env: Env, host: Host, counts: dict[str, int]) -> HostView:
    assert env.engine.fleet is not None
    state, memory, pool_free, addresses = host.state, None, None, None
    try:
        hv = env.engine.fleet.hv(host.name)
        memory = (await env.engine.io(hv.host_info)).memory_bytes_available
        pool_free = (await env.engine.io(hv.pool_info, host.pool)).available_bytes
        if host.network is not None:
            addresses = len(await free_addresses(env.engine, host.name, host.network))
    except HypervisorUnavailable:
        state = UNREACHABLE
    except Gone:
        pass  # its pool or network is gone: no room to show
    return HostView(name=host.name, uri=host.uri, fault_domain=host.fault_domain,
                    network=host.network, pool=host.pool, state=state,
                    instances=counts.get(host.name, 0),
                    memory_mib_free=None if memory is None else memory // 2**20,
                    pool_bytes_free=pool_free, addresses_free=addresses)


async def list_hosts(env: Env) -> list[HostView]:
    assert env.engine.fleet is not None
    counts = env.store.hosts_in_use()
    return [await _view(env, h, counts) for h in env.engine.fleet.hosts()]


async def show(env: Env, name: str) -> HostView:
    assert env.engine.fleet is not None
    return await _view(env, env.engine.fleet.host(name), env.store.hosts_in_use())


async def set_cordoned(env: Env, name: str, cordoned: bool) -> HostView:
    """A cordoned host gets no new instances; its instances stay."""
    if name == LOCAL and env.store.find_host(LOCAL) is None:
        raise InvalidInput("the implicit host local cannot be cordoned: register it with "
                           "`orch host add --name local --uri ...` first")
    env.store.get_host(name)
    env.store.set_host_state(name, CORDONED if cordoned else READY)
    return await show(env, name)


def sync_lab_hosts(store: Store, lab_hosts: Sequence[tuple[str, str, str, str, str]], *,
                   now: str) -> list[str]:
    """Register the lab's simulated hosts (name, uri, fault domain, network, pool) that are
    not registered yet, and forget registered ``lab-N`` hosts the lab no longer has and
    that hold no instance. ``orch lab up``/``down`` call it: the lab has just checked that
    each daemon answers, from the only namespace that reaches it. Returns what changed."""
    said = []
    wanted = {h[0]: h for h in lab_hosts}
    held = store.hosts_in_use()
    for rec in store.list_hosts():
        if rec.name.startswith("lab-") and rec.name not in wanted and not held.get(rec.name):
            store.delete_host(rec.name)
            said.append(f"host {rec.name} unregistered")
    for name, uri, fault_domain, network, pool in lab_hosts:
        if store.find_host(name) is None:
            store.add_host(HostRecord(name=name, uri=uri, fault_domain=fault_domain,
                                      network=network, pool=pool, state=READY, created_at=now))
            said.append(f"host {name} registered ({uri}, fault domain {fault_domain})")
    return said


async def remove(env: Env, name: str) -> list[str]:
    """Forget host ``name`` after deleting the image copies made there; returns the problems
    met (a host that does not answer keeps its copies: they are named)."""
    env.store.get_host(name)
    held = env.store.hosts_in_use().get(name, 0)
    if held:
        raise InvalidInput(f"host {name} holds {held} instance(s): remove them first (scale in, "
                           "delete-instances, or cordon it and let upgrades move them)")
    problems = await copies.prune(env.engine, keep=set(), hosts=[name])
    left = env.store.image_copies(name)
    if left:
        problems.append(f"host {name}: image copies left in its pool: "
                        + ", ".join(c.volume for c in left))
        for rec in left:
            env.store.forget_image_copy(name, rec.sha256)
    env.store.delete_host(name)
    assert env.engine.fleet is not None
    env.engine.fleet.forget(name)
    return problems
