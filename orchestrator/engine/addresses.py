"""Where a new instance goes on its network, and how its resources are named.

Owned here: ``InstanceNames`` (every volume an instance owns is named after its domain name
``<set>-<instanceId>``: ``<name>-os<k>.qcow2``, ``<name>-data<lun>.qcow2``,
``<name>-seed.iso``; its DHCP host entry carries ``name``), address and MAC allocation
(``allocate``: the instance's row is written, status ``creating``, before anything exists
in libvirt), and the free addresses of a network (``free_addresses``).

Called by: dryrun.simworld, engine.steps, usecases.bootdiag, usecases.hosts,
usecases.placement, usecases.rolling, usecases.sets
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import uuid
from dataclasses import dataclass

from orchestrator import ssh
from orchestrator.engine.context import LOCAL, Engine
from orchestrator.errors import OperationFailed
from orchestrator.hypervisor.base import NetworkInfo, Reservation
from orchestrator.images import Image
from orchestrator.model import Model
from orchestrator.store import InstanceRecord

# What follows ``<set>-<id>-`` in the name of each volume an instance owns.
VOLUME_KINDS = r"os\d*\.qcow2|seed\.iso|data\d+\.qcow2|console\.log(?:\.\d+)?"


@dataclass(frozen=True)
class InstanceNames:
    domain: str

    def os_volume(self, serial: int) -> str:
        """OS disks are numbered: a new image or a reimage makes the next one, and the one
        before is kept until the new one proves healthy (rollback is then a swap)."""
        return f"{self.domain}-os{serial}.qcow2"

    def next_os_volume(self, current: str) -> str:
        digits = current.removeprefix(f"{self.domain}-os").removesuffix(".qcow2")
        return self.os_volume(int(digits) + 1 if digits.isdigit() else 1)

    @property
    def seed_volume(self) -> str:
        return f"{self.domain}-seed.iso"

    def data_volume(self, lun: int) -> str:
        return f"{self.domain}-data{lun}.qcow2"

    @property
    def console_volume(self) -> str:
        """The serial console's log, in the pool of the instance's host (virtlogd writes it
        there and keeps rotated copies ``.0``, ``.1``, … beside it)."""
        return f"{self.domain}-console.log"

    def owns_volume(self, volume: str) -> bool:
        rest = volume.removeprefix(f"{self.domain}-")
        return rest != volume and re.fullmatch(VOLUME_KINDS, rest) is not None


def instance_name(set_name: str, instance_id: int) -> str:
    return f"{set_name}-{instance_id}"


def new_seed_id(set_name: str, instance_id: int) -> str:
    return f"{set_name}-{instance_id}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class NetworkView:
    """What libvirt says of a network's addresses, read once for a round of allocations."""

    info: NetworkInfo
    reservations: tuple[Reservation, ...]
    leases: dict[str, str]


async def read_network(engine: Engine, host: str, network: str) -> NetworkView:
    hv = engine.at(host).hv
    return NetworkView(info=await engine.io(hv.network_info, network),
                       reservations=tuple(await engine.io(hv.list_reservations, network)),
                       leases=await engine.io(hv.leased_addresses, network))


async def allocate(engine: Engine, *, set_name: str, instance_id: int, model: Model,
                   generation: int, image: Image, host: str = LOCAL) -> InstanceRecord:
    """Record a new instance on ``host`` (status ``creating``) with its MAC, IP and host key.

    The row is written before anything is created in libvirt (intent first), so a crash
    leaves a record that names everything to clean up or finish.
    """
    network = engine.at(host).host.network_for(model.network)
    view = await read_network(engine, host, network)
    host_key = ssh.generate_keypair(f"{instance_name(set_name, instance_id)} host key")
    with engine.store.transaction():
        taken_ips, taken_macs = _taken(engine, host, network, view)
        free = _free_in(view.info, taken_ips)
        if not free:
            raise OperationFailed(f"network {network} of host {host} has no free address in "
                                  f"{view.info.dhcp_start}-{view.info.dhcp_end}")
        ip = free[0]
        rec = InstanceRecord(
            set_name=set_name,
            instance_id=instance_id,
            name=instance_name(set_name, instance_id),
            status="creating",
            mac=_mac_for(ip, taken_macs),
            ip=ip,
            network=network,
            model_generation=generation,
            image=image.ref,
            host_key_public=host_key.public_openssh,
            host_key_private=host_key.private_openssh,
            seed_instance_id=new_seed_id(set_name, instance_id),
            protect_from_scale_in=False,
            protect_from_scale_set_actions=False,
            power_intent="running",
            health={},
            created_at=engine.now(),
            os_volume=InstanceNames(instance_name(set_name, instance_id)).os_volume(0),
            host=host,
        )
        engine.store.add_instance(rec)
    return rec


def _taken(engine: Engine, host: str, network: str,
           view: NetworkView) -> tuple[set[str], set[str]]:
    ips = {r.ip for r in view.reservations}
    # a lease held by a MAC other than the one this address would get blocks the address
    ips |= {ip for ip, mac in view.leases.items() if mac != _mac_for(ip, set())}
    macs = {r.mac.lower() for r in view.reservations}
    for inst in engine.store.all_instances():
        macs.add(inst.mac.lower())
        if inst.network == network and inst.host == host:
            ips.add(inst.ip)
    return ips, macs


def _mac_for(ip: str, taken: set[str]) -> str:
    """The MAC of an address: 52:54:00 and the address's last three bytes.

    An address freed by a deleted instance stays leased in dnsmasq until the lease expires,
    and dnsmasq will not hand a leased address to another MAC (the new instance then gets
    no address at all). Tying the MAC to the address makes a reused address come back with
    the same MAC, which the old lease matches.
    """
    mac = "52:54:00:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed[1:])
    return mac if mac not in taken else _random_mac(taken)


def _random_mac(taken: set[str]) -> str:
    for _ in range(1000):
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        if mac not in taken:
            return mac
    raise OperationFailed("could not find a free MAC address")


async def free_addresses(engine: Engine, host: str, network: str) -> list[str]:
    """The addresses of the network's DHCP range on ``host`` a new instance may get, lowest
    first: not the gateway, not reserved, not held by an instance, not leased to another MAC."""
    view = await read_network(engine, host, network)
    return _free_in(view.info, _taken(engine, host, network, view)[0])


def _free_in(net: NetworkInfo, taken: set[str]) -> list[str]:
    first = int(ipaddress.IPv4Address(net.dhcp_start))
    last = int(ipaddress.IPv4Address(net.dhcp_end))
    return [ip for ip in (str(ipaddress.IPv4Address(v)) for v in range(first, last + 1))
            if ip not in taken and ip != net.gateway]
