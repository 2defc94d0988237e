"""Where new instances of a set go, from what the hosts say now.

Owned here: ``ask_hosts`` (one question to every host; those that do not answer are named,
and with no host registered an unreachable libvirt stays exit 4), ``list_domains`` and
``observe_power`` (every host's domains in one call each), ``rooms`` (each host's room for
the set's model: the memory its libvirt says new guests can have, pool space, free
addresses, the set's instances there) and ``choose_hosts`` (``policy.place`` on them).
With no host registered every instance goes to the implicit host, as on one machine.

Called by: api.routes, dryrun.simworld, usecases.controller, usecases.recovery, usecases.repairs,
usecases.rolling, usecases.sets, usecases.views, usecases.watch
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from orchestrator.engine import policy
from orchestrator.engine.addresses import free_addresses
from orchestrator.engine.context import Where
from orchestrator.engine.hosts import LOCAL, READY
from orchestrator.errors import HypervisorUnavailable, InvalidInput
from orchestrator.hypervisor.base import DomainInfo, PowerState
from orchestrator.images import Image
from orchestrator.model import Model
from orchestrator.usecases.session import Env

GIB = 1024**3
T = TypeVar("T")


@dataclass(frozen=True)
class Power:
    """Every domain's state on every host that answered, and the hosts that did not."""

    states: dict[str, PowerState]
    unreachable: frozenset[str]


async def ask_hosts(env: Env, ask: Callable[[Where], Awaitable[T]]
                    ) -> tuple[list[tuple[Where, T]], frozenset[str]]:
    """``ask`` every host in turn: the answers of those that answered, and the names of
    those that did not. With no host registered, libvirt unreachable stays the command's
    own problem (HypervisorUnavailable, exit 4)."""
    answers: list[tuple[Where, T]] = []
    unreachable: set[str] = set()
    for w in env.engine.hosts():
        try:
            answers.append((w, await ask(w)))
        except HypervisorUnavailable:
            if not env.engine.fleet or not env.engine.fleet.registered:
                raise
            unreachable.add(w.name)
    return answers, frozenset(unreachable)


async def list_domains(env: Env) -> tuple[list[tuple[Where, list[DomainInfo]]], frozenset[str]]:
    """Every host's domains, one call per host, and the hosts that did not answer."""
    return await ask_hosts(env, lambda w: env.engine.io(w.hv.list_domains))


async def observe_power(env: Env) -> Power:
    listed, unreachable = await list_domains(env)
    return Power({d.name: d.state for _, domains in listed for d in domains}, unreachable)


def fault_domains(env: Env) -> dict[str, str]:
    """Host name -> fault domain, for every host the controller knows."""
    assert env.engine.fleet is not None
    return {h.name: h.fault_domain for h in env.engine.fleet.hosts()}


def disk_bytes(model: Model, image: Image) -> int:
    return sum(d.size_gib for d in model.data_disks) * GIB + image.virtual_size + 2**20


async def rooms(env: Env, set_name: str, model: Model) -> list[policy.HostRoom]:
    counts: dict[str, int] = {}
    for inst in env.store.list_instances(set_name):
        counts[inst.host] = counts.get(inst.host, 0) + 1
    out = []
    for w in env.engine.hosts():
        network = w.host.network_for(model.network)
        try:
            memory = (await env.engine.io(w.hv.host_info)).memory_bytes_available
            pool = await env.engine.io(w.hv.pool_info, w.pool)
            addresses = len(await free_addresses(env.engine, w.name, network))
            reachable = True
        except HypervisorUnavailable:
            memory, pool, addresses, reachable = 0, None, 0, False
        out.append(policy.HostRoom(
            name=w.name, fault_domain=w.host.fault_domain,
            ready=reachable and w.host.state == READY,
            memory_bytes=memory,
            pool_bytes=pool.available_bytes if pool else 0,
            addresses=addresses, instances=counts.get(w.name, 0)))
    return out


async def choose_hosts(env: Env, set_name: str, model: Model, image: Image, count: int, *,
                       fault_domains: Sequence[str] = ()) -> list[str]:
    """The host of each of ``count`` new instances; InvalidInput when they do not fit."""
    assert env.engine.fleet is not None
    if not env.engine.fleet.registered:
        return [LOCAL] * count
    verdict = policy.place(await rooms(env, set_name, model), count,
                           memory_bytes=model.memory_mib * 2**20,
                           disk_bytes=disk_bytes(model, image),
                           fault_domains=fault_domains or model.fault_domains)
    if isinstance(verdict, str):
        raise InvalidInput(verdict)
    return verdict

