"""The XML the libvirt adapter writes and reads, without libvirt.

Owned here: ``volume_xml`` (a storage volume's definition: capacity, allocation, format,
mode 0644, a pinned backing store), ``host_xml`` (a DHCP host entry), ``domain_types_of``
(the kvm/qemu domain types a capabilities document offers x86_64 guests) and
``prefix_from_netmask``. All of it ElementTree, never string formatting.
Called by: hypervisor.libvirt
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from orchestrator.hypervisor.base import DOMAIN_TYPES, Reservation

__all__ = ["domain_types_of", "host_xml", "prefix_from_netmask", "volume_xml"]


def _xml(root: ET.Element) -> str:
    return ET.tostring(root, encoding="unicode")


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def volume_xml(
    name: str, *, capacity_bytes: int, fmt: str, backing: tuple[str, str] | None = None,
    allocation_bytes: int | None = None,
) -> str:
    vol = ET.Element("volume")
    _sub(vol, "name", name)
    _sub(vol, "capacity", str(capacity_bytes), unit="bytes")
    if allocation_bytes is not None:
        _sub(vol, "allocation", str(allocation_bytes), unit="bytes")
    target = _sub(vol, "target")
    _sub(target, "format", type=fmt)
    _sub(_sub(target, "permissions"), "mode", "0644")
    if backing is not None:
        store = _sub(vol, "backingStore")
        _sub(store, "path", backing[0])
        _sub(store, "format", type=backing[1])  # pinned: never let qemu probe the format
    return _xml(vol)


def host_xml(reservation: Reservation) -> str:
    attrs = {"mac": reservation.mac, "ip": reservation.ip}
    if reservation.name:
        attrs["name"] = reservation.name
    return _xml(ET.Element("host", attrs))


def domain_types_of(capabilities: str) -> tuple[str, ...]:
    """The ``DOMAIN_TYPES`` a host's capabilities XML offers for x86_64 hvm guests, sorted."""
    found: set[str] = set()
    for guest in ET.fromstring(capabilities).findall("./guest"):
        if guest.findtext("os_type", "").strip() != "hvm":
            continue
        for arch in guest.findall("./arch"):
            if arch.get("name") == "x86_64":
                found.update(d.get("type", "") for d in arch.findall("./domain"))
    return tuple(sorted(found & set(DOMAIN_TYPES)))


def prefix_from_netmask(netmask: str) -> int:
    bits = "".join(f"{int(part):08b}" for part in netmask.split("."))
    return bits.count("1")
