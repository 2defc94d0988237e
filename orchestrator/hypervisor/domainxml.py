"""Domain XML as small declarative element classes (pure: no libvirt import).

Owned here: ``Domain`` and its parts (``DirectKernelBoot``, ``Disk``, ``BackingStore``,
``Interface``), ``Ownership`` (our metadata), ``to_xml`` and ``parse_owner``.
Called by: engine.steps, hypervisor.base, hypervisor.fake, hypervisor.libvirt,
hypervisor.retry
``engine.steps`` builds a ``Domain`` per instance; ``hypervisor.base`` passes ``Domain``
and ``Ownership`` across the seam; the adapters use ``to_xml`` for libvirt and ``parse_owner``
to read our metadata back.

XML is produced with ElementTree only, never by string formatting, so names and paths can
never inject markup. Element order is fixed so that golden files (tests/unit/golden) are
stable; regenerate them with ``ORCH_REGEN_GOLDEN=1 pytest tests/unit/test_domainxml.py``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

METADATA_NS = "http://orchestrator.local/xmlns/instance/1"
METADATA_PREFIX = "orch"


@dataclass(frozen=True)
class Ownership:
    """Who a domain belongs to; written into the domain's metadata by the controller."""

    set_name: str
    instance_id: int
    generation: int


@dataclass(frozen=True)
class DirectKernelBoot:
    kernel: str
    initrd: str | None = None
    cmdline: str | None = None


@dataclass(frozen=True)
class BackingStore:
    """The (read-only) base an overlay sits on; format always explicit, never probed."""

    path: str
    fmt: str = "qcow2"


@dataclass(frozen=True)
class Disk:
    path: str
    target: str  # vda, vdb, ...
    fmt: str = "qcow2"  # driver type: qcow2 | raw
    readonly: bool = False
    serial: str | None = None
    backing: BackingStore | None = None


@dataclass(frozen=True)
class Interface:
    network: str
    mac: str
    model: str = "virtio"


@dataclass(frozen=True)
class Domain:
    name: str
    domain_type: str  # "qemu" (TCG) | "kvm"
    memory_mib: int
    vcpus: int
    disks: tuple[Disk, ...]
    interfaces: tuple[Interface, ...]
    boot: DirectKernelBoot | None = None  # None: BIOS boot from the first disk
    console_log: str | None = None
    owner: Ownership | None = None
    uuid: str | None = None
    description: str | None = None

    def to_element(self) -> ET.Element:
        root = ET.Element("domain", {"type": self.domain_type})
        _text(root, "name", self.name)
        if self.uuid:
            _text(root, "uuid", self.uuid)
        if self.description:
            _text(root, "description", self.description)
        if self.owner is not None:
            _owner_element(ET.SubElement(root, "metadata"), self.owner)
        _text(root, "memory", str(self.memory_mib), unit="MiB")
        _text(root, "vcpu", str(self.vcpus))
        root.append(self._os_element())
        features = ET.SubElement(root, "features")
        ET.SubElement(features, "acpi")
        ET.SubElement(features, "apic")
        if self.domain_type == "kvm":
            ET.SubElement(root, "cpu", {"mode": "host-passthrough"})
        ET.SubElement(root, "clock", {"offset": "utc"})
        _text(root, "on_poweroff", "destroy")
        _text(root, "on_reboot", "restart")
        _text(root, "on_crash", "destroy")
        devices = ET.SubElement(root, "devices")
        for disk in self.disks:
            devices.append(_disk_element(disk))
        for nic in self.interfaces:
            devices.append(_interface_element(nic))
        serial = ET.SubElement(devices, "serial", {"type": "pty"})
        if self.console_log:
            ET.SubElement(serial, "log", {"file": self.console_log, "append": "off"})
        ET.SubElement(serial, "target", {"port": "0"})
        console = ET.SubElement(devices, "console", {"type": "pty"})
        ET.SubElement(console, "target", {"type": "serial", "port": "0"})
        rng = ET.SubElement(devices, "rng", {"model": "virtio"})
        _text(rng, "backend", "/dev/urandom", model="random")
        ET.SubElement(devices, "memballoon", {"model": "none"})
        return root

    def _os_element(self) -> ET.Element:
        os_el = ET.Element("os")
        _text(os_el, "type", "hvm", arch="x86_64")
        if self.boot is not None:
            _text(os_el, "kernel", self.boot.kernel)
            if self.boot.initrd:
                _text(os_el, "initrd", self.boot.initrd)
            if self.boot.cmdline:
                _text(os_el, "cmdline", self.boot.cmdline)
        else:
            ET.SubElement(os_el, "boot", {"dev": "hd"})
        return os_el

    def to_xml(self) -> str:
        root = self.to_element()
        ET.indent(root, space="  ")
        return ET.tostring(root, encoding="unicode") + "\n"


def _text(parent: ET.Element, tag: str, text: str, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    el.text = text
    return el


def _owner_element(metadata: ET.Element, owner: Ownership) -> None:
    ns = f"{{{METADATA_NS}}}"
    inst = ET.SubElement(metadata, f"{ns}instance")
    _text(inst, f"{ns}set", owner.set_name)
    _text(inst, f"{ns}instanceId", str(owner.instance_id))
    _text(inst, f"{ns}generation", str(owner.generation))


def _disk_element(disk: Disk) -> ET.Element:
    el = ET.Element("disk", {"type": "file", "device": "disk"})
    ET.SubElement(el, "driver", {"name": "qemu", "type": disk.fmt})
    ET.SubElement(el, "source", {"file": disk.path})
    if disk.backing is not None:
        bs = ET.SubElement(el, "backingStore", {"type": "file"})
        ET.SubElement(bs, "format", {"type": disk.backing.fmt})
        ET.SubElement(bs, "source", {"file": disk.backing.path})
    ET.SubElement(el, "target", {"dev": disk.target, "bus": "virtio"})
    if disk.readonly:
        ET.SubElement(el, "readonly")
    if disk.serial:
        _text(el, "serial", disk.serial)
    return el


def _interface_element(nic: Interface) -> ET.Element:
    el = ET.Element("interface", {"type": "network"})
    ET.SubElement(el, "mac", {"address": nic.mac})
    ET.SubElement(el, "source", {"network": nic.network})
    ET.SubElement(el, "model", {"type": nic.model})
    # no iPXE option ROM: nothing boots from the network, and loading it costs ~1 s under TCG
    ET.SubElement(el, "rom", {"enabled": "no"})
    return el


def owner_metadata_xml(owner: Ownership) -> str:
    """Just the metadata element, for ``virDomainSetMetadata``-style updates."""
    holder = ET.Element("metadata")
    _owner_element(holder, owner)
    return ET.tostring(holder[0], encoding="unicode")


def parse_owner(domain_xml: str) -> Ownership | None:
    """Our ownership metadata from a full domain XML, or None when absent or malformed."""
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError:
        return None
    ns = {"o": METADATA_NS}
    inst = root.find("./metadata/o:instance", ns)
    if inst is None:
        return None
    set_name = inst.findtext("o:set", default="", namespaces=ns).strip()
    if not set_name:
        return None  # an owner without a set name would match no set: treat as not ours
    try:
        return Ownership(
            set_name=set_name,
            instance_id=int(inst.findtext("o:instanceId", default="", namespaces=ns)),
            generation=int(inst.findtext("o:generation", default="", namespaces=ns)),
        )
    except ValueError:
        return None


def parse_files(domain_xml: str) -> tuple[str, ...]:
    """Every file a domain XML names: disk sources and their backing chains, kernel, initrd."""
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError:
        return ()
    found = [el.get("file", "") for el in root.iter("source")]
    found += [root.findtext(f"./os/{tag}", default="") for tag in ("kernel", "initrd")]
    return tuple(sorted({f.strip() for f in found if f and f.strip()}))


def domain_files(domain: Domain) -> tuple[str, ...]:
    """What ``parse_files`` finds in ``domain``'s XML, read off the element classes."""
    found = [d.path for d in domain.disks] + [d.backing.path for d in domain.disks if d.backing]
    if domain.boot is not None:
        found += [domain.boot.kernel, domain.boot.initrd or ""]
    return tuple(sorted({f for f in found if f}))


ET.register_namespace(METADATA_PREFIX, METADATA_NS)
