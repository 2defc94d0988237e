"""Golden-file tests of ``Domain.to_xml`` and the ownership metadata round trip.

Regenerate the golden files with ``ORCH_REGEN_GOLDEN=1 pytest tests/unit/test_domainxml.py``:
the test then rewrites them and FAILS saying so, so a regeneration is never a silent pass.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from orchestrator.engine.copies import HostImage, copy_volume
from orchestrator.engine.steps import build_domain
from orchestrator.hypervisor.domainxml import (
    METADATA_NS,
    BackingStore,
    DirectKernelBoot,
    Disk,
    Domain,
    Interface,
    Ownership,
    owner_metadata_xml,
    parse_owner,
)
from orchestrator.images import Image
from orchestrator.model import Model, validate
from orchestrator.store import ImageRecord, InstanceRecord
from tests.world import World

GOLDEN = Path(__file__).parent / "golden"


def check_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if os.environ.get("ORCH_REGEN_GOLDEN") == "1":
        path.write_text(actual, encoding="utf-8")
        pytest.fail(f"regenerated {path}; review the diff and run again without ORCH_REGEN_GOLDEN")
    assert path.exists(), f"{path} missing: run with ORCH_REGEN_GOLDEN=1 to create it"
    assert actual == path.read_text(encoding="utf-8")


def kernel_boot_domain() -> Domain:
    pool = "/var/lib/orchestrator/pool"
    return Domain(
        name="web-1",
        domain_type="qemu",
        memory_mib=256,
        vcpus=2,
        uuid="8c3a1a6e-4f7b-4c1e-9a55-0c4f3d2b1a00",
        description="instance 1 of scale set web",
        disks=(
            Disk(path=f"{pool}/web-1-os.qcow2", target="vda", serial="os",
                 backing=BackingStore("/var/lib/orchestrator/images/tiny/1/disk.qcow2", "qcow2")),
            Disk(path=f"{pool}/web-1-data0.qcow2", target="vdb", serial="lun0"),
            Disk(path=f"{pool}/web-1-data1.qcow2", target="vdc", serial="lun1"),
            Disk(path=f"{pool}/web-1-seed.iso", target="vdd", fmt="raw", readonly=True),
        ),
        interfaces=(Interface(network="orchlab", mac="52:54:00:6a:00:01"),),
        boot=DirectKernelBoot(
            kernel="/var/lib/orchestrator/images/tiny/1/vmlinuz",
            initrd="/var/lib/orchestrator/images/tiny/1/initrd.img",
            cmdline="console=ttyS0 quiet",
        ),
        console_log="/var/lib/orchestrator/console/web-1.log",
        owner=Ownership(set_name="web", instance_id=1, generation=3),
    )


def bios_kvm_domain() -> Domain:
    return Domain(
        name="db-7",
        domain_type="kvm",
        memory_mib=1024,
        vcpus=1,
        disks=(Disk(path="/pool/db-7-os.qcow2", target="vda",
                    backing=BackingStore("/images/debian-12/20261127/disk.qcow2")),),
        interfaces=(Interface(network="default", mac="52:54:00:6a:00:07"),),
        owner=Ownership(set_name="db", instance_id=7, generation=1),
    )


HOSTILE_NAME = "evil<>&'\"name"
HOSTILE_PATH = "/var/lib/my pool/it's \"quoted\" & <tagged>.qcow2"


def hostile_domain() -> Domain:
    return Domain(
        name=HOSTILE_NAME,
        domain_type="qemu",
        memory_mib=128,
        vcpus=1,
        description="</description><devices><disk/></devices>",
        disks=(Disk(path=HOSTILE_PATH, target="vda",
                    backing=BackingStore("/images/base 'x' \"y\".qcow2")),),
        interfaces=(Interface(network="net'\"<>", mac="52:54:00:00:00:01"),),
        boot=DirectKernelBoot(kernel="/k/vm linuz", cmdline="init=/bin/sh -c 'echo \"<&>\"'"),
        console_log="/logs/a b'c\".log",
        owner=Ownership(set_name="s<&>'\"", instance_id=1, generation=2),
    )


# --- golden files ---------------------------------------------------------------------------
def test_direct_kernel_boot_domain_matches_golden() -> None:
    check_golden("kernel-boot.xml", kernel_boot_domain().to_xml())


def test_bios_kvm_domain_matches_golden() -> None:
    check_golden("bios-kvm.xml", bios_kvm_domain().to_xml())


def test_hostile_values_match_golden() -> None:
    check_golden("hostile.xml", hostile_domain().to_xml())


# --- structure the golden files alone would not explain -------------------------------------
def test_kernel_boot_structure() -> None:
    root = ET.fromstring(kernel_boot_domain().to_xml())
    assert root.get("type") == "qemu"
    assert root.find("./os/boot") is None
    assert root.findtext("./os/kernel") == "/var/lib/orchestrator/images/tiny/1/vmlinuz"
    disks = root.findall("./devices/disk")
    assert [d.find("target").get("dev") for d in disks] == ["vda", "vdb", "vdc", "vdd"]  # type: ignore[union-attr]
    backing = disks[0].find("backingStore")
    assert backing is not None
    assert backing.find("format").get("type") == "qcow2"  # type: ignore[union-attr]
    assert disks[3].find("readonly") is not None
    assert disks[3].find("driver").get("type") == "raw"  # type: ignore[union-attr]
    assert all(d.find("readonly") is None for d in disks[:3])
    assert root.find("./cpu") is None  # host-passthrough only for kvm


def test_bios_boot_structure() -> None:
    root = ET.fromstring(bios_kvm_domain().to_xml())
    assert root.get("type") == "kvm"
    assert root.find("./os/kernel") is None
    boot = root.find("./os/boot")
    assert boot is not None and boot.get("dev") == "hd"
    cpu = root.find("./cpu")
    assert cpu is not None and cpu.get("mode") == "host-passthrough"
    assert root.find("./devices/serial/log") is None


def test_hostile_values_are_escaped_and_round_trip() -> None:
    xml = hostile_domain().to_xml()
    assert "<>&" not in xml  # raw markup characters never reach the document
    root = ET.fromstring(xml)
    assert root.findtext("./name") == HOSTILE_NAME
    assert root.findtext("./description") == "</description><devices><disk/></devices>"
    assert len(root.findall("./devices/disk")) == 1  # the description injected nothing
    source = root.find("./devices/disk/source")
    assert source is not None and source.get("file") == HOSTILE_PATH
    assert root.findtext("./os/cmdline") == "init=/bin/sh -c 'echo \"<&>\"'"
    log = root.find("./devices/serial/log")
    assert log is not None and log.get("file") == "/logs/a b'c\".log"
    assert parse_owner(xml) == Ownership(set_name="s<&>'\"", instance_id=1, generation=2)


# --- ownership metadata ---------------------------------------------------------------------
def test_owner_round_trips_through_the_domain_xml() -> None:
    assert parse_owner(kernel_boot_domain().to_xml()) == Ownership("web", 1, 3)


def test_domain_without_owner_has_none() -> None:
    dom = Domain(name="x", domain_type="qemu", memory_mib=64, vcpus=1, disks=(), interfaces=())
    assert ET.fromstring(dom.to_xml()).find("./metadata") is None
    assert parse_owner(dom.to_xml()) is None


def test_owner_metadata_xml_is_the_instance_element() -> None:
    el = ET.fromstring(owner_metadata_xml(Ownership("web", 4, 9)))
    assert el.tag == f"{{{METADATA_NS}}}instance"
    wrapped = ET.Element("domain")
    ET.SubElement(wrapped, "metadata").append(el)
    assert parse_owner(ET.tostring(wrapped, encoding="unicode")) == Ownership("web", 4, 9)


def _with_metadata(*children: tuple[str, str]) -> str:
    root = ET.Element("domain")
    inst = ET.SubElement(ET.SubElement(root, "metadata"), f"{{{METADATA_NS}}}instance")
    for tag, text in children:
        ET.SubElement(inst, f"{{{METADATA_NS}}}{tag}").text = text
    return ET.tostring(root, encoding="unicode")


@pytest.mark.parametrize(
    "xml",
    [
        "",
        "not xml at all",
        "<domain><metadata>",
        "<domain><metadata/></domain>",
        # our element names in a foreign namespace are not ours
        (
            "<domain><metadata><instance xmlns='http://example.com/x'><set>web</set>"
            "<instanceId>1</instanceId><generation>1</generation></instance></metadata></domain>"
        ),
        _with_metadata(("set", "web"), ("instanceId", "one"), ("generation", "1")),
        _with_metadata(("set", "web"), ("instanceId", "1")),
        _with_metadata(("set", "web"), ("instanceId", "1"), ("generation", "")),
        _with_metadata(("instanceId", "1"), ("generation", "1")),
        _with_metadata(("set", "  "), ("instanceId", "1"), ("generation", "1")),
    ],
    ids=["empty", "text", "truncated", "no-instance", "foreign-ns", "non-int", "missing-gen",
         "empty-gen", "missing-set", "blank-set"],
)
def test_malformed_metadata_is_none(xml: str) -> None:
    assert parse_owner(xml) is None


# --- one path for both boot styles: the domain an instance gets from each kind of image ------
def _instance_domain(world: World, manifest: dict[str, object]) -> str:
    """The XML ``build_domain`` makes for instance 3 of set web on an image with
    ``manifest``, with the temp state dir shown as /var/lib/orchestrator."""
    directory = "/var/lib/orchestrator/images/cloud/1"
    image = Image(ImageRecord("cloud", "1", "0" * 64, directory,
                              {"disk": "disk.qcow2", "virtualSize": 2**30, **manifest}, "x"))
    inst = InstanceRecord(
        set_name="web", instance_id=3, name="web-3", status="active", mac="52:54:00:00:00:03",
        ip="192.168.122.5", network="default", model_generation=2, image="cloud:1",
        host_key_public="", host_key_private="", seed_instance_id="web-3-x",
        protect_from_scale_in=False, protect_from_scale_set_actions=False,
        power_intent="running", health={}, created_at="x", os_volume="web-3-os1.qcow2")
    model = validate(Model, {"image": "cloud:1", "vcpus": 2, "memoryMiB": 512,
                             "dataDisks": [{"lun": 0, "sizeGiB": 1}]})
    pool = Path(world.hv.pool_info("default").path)
    base = HostImage(str(pool / copy_volume("1" * 64, "qcow2")),
                     str(pool / copy_volume("2" * 64, "raw")) if image.kernel else None,
                     str(pool / copy_volume("3" * 64, "raw")) if image.initrd else None)
    domain = build_domain(world.service.engine, inst, model, image, base=base, pool_path=pool)
    xml = ET.fromstring(domain.to_xml())
    if xml.find("./uuid") is not None:
        xml.remove(xml.find("./uuid"))  # type: ignore[arg-type]
    return ET.tostring(xml, encoding="unicode").replace(str(world.state_dir),
                                                        "/var/lib/orchestrator") + "\n"


def test_an_image_without_kernel_boots_its_own_disk(world: World) -> None:
    """Downloaded cloud images and debian-12: BIOS, the bootloader inside the image."""
    check_golden("instance-bios.xml", _instance_domain(world, {"sshUser": "debian"}))


def test_an_image_with_kernel_boots_it_directly(world: World) -> None:
    check_golden("instance-kernel.xml", _instance_domain(world, {
        "kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": "console=ttyS0 root=/dev/vda rw"}))
