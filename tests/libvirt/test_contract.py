"""One behaviour contract for every ``Hypervisor``: the libvirt adapter and the fake must agree.

Each test runs twice: against ``LibvirtHypervisor("test:///default")`` (libvirt's in-process
test driver: no daemon, no files, a fresh state per connection) and against ``FakeHypervisor``
with a ``FakeClock``. Both sides get the same names: network ``default`` (192.168.122.0/24,
the test driver's own) and ``orchlab`` (10.213.0.0/24), storage pool ``default``.
Inherent differences (the fake's shutdown takes clock time, the test driver's is instant; the
test driver cannot upload or download) are met by polling with a deadline or stated per
implementation.
The libvirt adapter's streamed upload itself is held by tests/libvirt/test_upload_stream.py.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import inspect
import itertools
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
import pytest

from orchestrator.clock import FakeClock
from orchestrator.errors import Gone, HypervisorError, HypervisorUnavailable, InvalidInput
from orchestrator.hypervisor.base import (
    DOMAIN_TYPES,
    MUTATING_VERBS,
    UNAVAILABLE_HINT,
    UPLOAD_FORMATS,
    VERBS,
    Hypervisor,
    PowerState,
    Reservation,
)
from orchestrator.hypervisor.domainxml import BackingStore, Disk, Domain, Interface, Ownership
from orchestrator.hypervisor.fake import DEFAULT_HOST, FakeHypervisor
from orchestrator.hypervisor.libvirt import LibvirtHypervisor, node_memory, translate_error
from orchestrator.hypervisor.libvirtxml import domain_types_of

POOL = "default"
POOL_PATH = "/var/lib/orch-contract-pool"
BASE_IMAGE = "/var/lib/orch-contract-images/tiny-1.qcow2"
MiB = 1024**2


@dataclass
class Harness:
    kind: str  # "libvirt" | "fake"
    hv: Hypervisor
    tick: Callable[[], None]  # let a little (real or fake) time pass while polling
    make_unavailable: Callable[[], Hypervisor]
    # everything the hypervisor holds, read past the adapter (not through the verbs tested)
    snapshot: Callable[[], object]
    files: Path = field(default_factory=lambda: Path("/nonexistent"))  # local files to upload

    def image(self, name: str = "tiny-1.raw", content: bytes = b"disk" * 4096) -> tuple[str, str]:
        """A local image file (path, sha256), with a hole in the middle."""
        path = self.files / name
        with open(path, "wb") as f:
            f.write(content)
            f.seek(len(content) + 1024 * 1024)
            f.write(content)
        return str(path), hashlib.sha256(path.read_bytes()).hexdigest()


def _libvirt_harness() -> Harness:
    hv = LibvirtHypervisor("test:///default")
    # The test driver's state lives in this one connection: set it up through the adapter's.
    conn: Any = hv._connection()
    pool = ET.Element("pool", {"type": "dir"})
    ET.SubElement(pool, "name").text = POOL
    ET.SubElement(ET.SubElement(pool, "target"), "path").text = POOL_PATH
    conn.storagePoolDefineXML(ET.tostring(pool, encoding="unicode"), 0).create(0)
    net = ET.Element("network")
    ET.SubElement(net, "name").text = "orchlab"
    ET.SubElement(net, "bridge", {"name": "orchbr0"})
    ip = ET.SubElement(net, "ip", {"address": "10.213.0.1", "prefix": "24"})
    ET.SubElement(ET.SubElement(ip, "dhcp"), "range", {"start": "10.213.0.10", "end": "10.213.0.250"})
    conn.networkDefineXML(ET.tostring(net, encoding="unicode")).create()
    def snapshot() -> object:
        return (
            {d.name(): (d.XMLDesc(0), d.state()) for d in conn.listAllDomains(0)},
            {p.name(): (p.isActive(), {v.name(): v.XMLDesc(0) for v in p.listAllVolumes(0)})
             for p in conn.listAllStoragePools(0)},
            {n.name(): (n.isActive(), n.XMLDesc(0)) for n in conn.listAllNetworks(0)},
        )

    return Harness(
        kind="libvirt",
        hv=hv,
        tick=lambda: time.sleep(0.01),  # one poll interval; the deadline is what bounds the wait
        make_unavailable=lambda: LibvirtHypervisor("qemu+unix:///system?socket=/nonexistent"),
        snapshot=snapshot,
    )


def _fake_harness() -> Harness:
    clock = FakeClock()
    from orchestrator.hypervisor.base import PoolInfo

    hv = FakeHypervisor(clock=clock, pools=[PoolInfo(POOL, POOL_PATH, 100 * 1024**3, 0, True)])
    hv.add_external_file(BASE_IMAGE)

    def unavailable() -> Hypervisor:
        down = FakeHypervisor(clock=clock)
        down.set_unavailable(True)
        return down

    def snapshot() -> object:
        return (
            {n: dataclasses.astuple(r) for n, r in hv._records.items()},
            {p.name: (p.capacity, p.active, {v.name: dataclasses.astuple(v)
                                             for v in p.volumes.values()})
             for p in hv._pools.values()},
            {n.info.name: (n.info, list(n.reservations), dict(n.leases))
             for n in hv._networks.values()},
        )

    return Harness(kind="fake", hv=hv, tick=lambda: clock.advance(0.25),
                   make_unavailable=unavailable, snapshot=snapshot)


@pytest.fixture(params=[pytest.param("libvirt", marks=pytest.mark.libvirt), "fake"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    harness = _libvirt_harness() if request.param == "libvirt" else _fake_harness()
    harness.files = tmp_path
    yield harness
    # An error kept by `pytest.raises(...) as info` is a reference cycle (its traceback holds
    # the test's frame) that keeps the test driver's pool and volume objects, and with them
    # its connection and state, alive until collected: collect before closing.
    gc.collect()
    harness.hv.close()


def wait_for(h: Harness, predicate: Callable[[], bool], *, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{h.kind}: timed out after {timeout}s waiting for {what}")
        h.tick()


def make_domain(h: Harness, name: str, *, owner: Ownership | None = None) -> Domain:
    """A domain whose disks exist in the pool (the fake checks that at start)."""
    os_disk = h.hv.create_overlay(
        POOL, name=f"{name}-os.qcow2", backing_path=BASE_IMAGE, backing_format="qcow2",
        capacity_bytes=64 * MiB,
    )
    return Domain(
        name=name,
        domain_type="qemu",
        memory_mib=128,
        vcpus=1,
        disks=(Disk(path=os_disk.path, target="vda", backing=BackingStore(BASE_IMAGE)),),
        interfaces=(Interface(network="orchlab", mac="52:54:00:00:00:01"),),
        owner=owner,
    )


# --- domains --------------------------------------------------------------------------------
def test_domain_lifecycle_verbs_are_idempotent(h: Harness) -> None:
    hv = h.hv
    hv.define_domain(make_domain(h, "web-1", owner=Ownership("web", 1, 1)))
    assert hv.domain_state("web-1") is PowerState.STOPPED
    hv.shutdown("web-1")  # already off: no error
    hv.destroy("web-1")

    hv.start("web-1")
    assert hv.domain_state("web-1") is PowerState.RUNNING
    hv.start("web-1")  # running already: no error
    assert hv.domain_state("web-1") is PowerState.RUNNING

    hv.shutdown("web-1")
    hv.shutdown("web-1")  # a second request while going down: no error
    wait_for(h, lambda: hv.domain_state("web-1") is PowerState.STOPPED, what="ACPI shutdown")

    hv.start("web-1")
    hv.destroy("web-1")
    assert hv.domain_state("web-1") is PowerState.STOPPED
    hv.destroy("web-1")

    hv.undefine("web-1")
    assert hv.domain_state("web-1") is PowerState.MISSING
    hv.undefine("web-1")  # missing already: no error


def test_undefine_of_a_running_domain_is_refused(h: Harness) -> None:
    h.hv.define_domain(make_domain(h, "web-1"))
    h.hv.start("web-1")
    with pytest.raises(HypervisorError, match="running"):
        h.hv.undefine("web-1")
    assert h.hv.domain_state("web-1") is PowerState.RUNNING


def test_verbs_on_a_missing_domain_raise_gone(h: Harness) -> None:
    assert h.hv.domain_state("nope") is PowerState.MISSING
    assert h.hv.domain_owner("nope") is None
    h.hv.undefine("nope")  # missing already: no error
    for verb in (h.hv.start, h.hv.shutdown, h.hv.destroy):
        with pytest.raises(Gone) as info:
            verb("nope")
        # a hypervisor object that is not there is not bad input: exit 1, not 2
        assert not isinstance(info.value, InvalidInput) and info.value.exit_code == 1


def test_ownership_metadata_round_trips(h: Harness) -> None:
    h.hv.define_domain(make_domain(h, "web-1", owner=Ownership("web", 1, 3)))
    h.hv.define_domain(make_domain(h, "stranger"))
    assert h.hv.domain_owner("web-1") == Ownership("web", 1, 3)
    assert h.hv.domain_owner("stranger") is None

    by_name = {d.name: d for d in h.hv.list_domains()}
    assert by_name["web-1"].owner == Ownership("web", 1, 3)
    assert by_name["web-1"].state is PowerState.STOPPED
    assert by_name["stranger"].owner is None


def test_a_listed_domain_names_the_files_it_rests_on(h: Harness) -> None:
    """What ``engine.copies.prune`` checks before it deletes an image copy."""
    domain = make_domain(h, "web-1", owner=Ownership("web", 1, 3))
    h.hv.define_domain(domain)
    listed = next(d for d in h.hv.list_domains() if d.name == "web-1")
    assert listed.files == tuple(sorted({domain.disks[0].path, BASE_IMAGE}))


def test_redefining_replaces_the_definition(h: Harness) -> None:
    h.hv.define_domain(make_domain(h, "web-1", owner=Ownership("web", 1, 3)))
    h.hv.delete_volume(POOL, "web-1-os.qcow2")
    h.hv.define_domain(make_domain(h, "web-1", owner=Ownership("web", 1, 4)))
    assert h.hv.domain_owner("web-1") == Ownership("web", 1, 4)
    assert [d.name for d in h.hv.list_domains()].count("web-1") == 1


# --- network --------------------------------------------------------------------------------
def test_network_info(h: Harness) -> None:
    info = h.hv.network_info("orchlab")
    assert (info.bridge, info.gateway, info.prefix) == ("orchbr0", "10.213.0.1", 24)
    assert (info.dhcp_start, info.dhcp_end, info.active) == ("10.213.0.10", "10.213.0.250", True)
    default = h.hv.network_info("default")
    assert (default.gateway, default.prefix) == ("192.168.122.1", 24)
    assert (default.dhcp_start, default.dhcp_end) == ("192.168.122.2", "192.168.122.254")
    with pytest.raises(Gone):
        h.hv.network_info("nope")


def test_reservations_add_list_remove(h: Harness) -> None:
    r1 = Reservation(mac="52:54:00:00:00:01", ip="10.213.0.11", name="web-1")
    r2 = Reservation(mac="52:54:00:00:00:02", ip="10.213.0.12", name="web-2")
    h.hv.add_reservation("orchlab", r1)
    h.hv.add_reservation("orchlab", r1)  # identical again: no-op
    h.hv.add_reservation("orchlab", Reservation(r1.mac.upper(), r1.ip, r1.name))  # MAC case
    h.hv.add_reservation("orchlab", r2)
    assert h.hv.list_reservations("orchlab") == [r1, r2]

    h.hv.remove_reservation("orchlab", r1)
    h.hv.remove_reservation("orchlab", r1)  # missing already: no error
    assert h.hv.list_reservations("orchlab") == [r2]
    h.hv.remove_reservation("orchlab", r2)
    assert h.hv.list_reservations("orchlab") == []


@pytest.mark.parametrize(
    "other",
    [
        Reservation(mac="52:54:00:00:00:01", ip="10.213.0.99", name="web-9"),  # same MAC
        Reservation(mac="52:54:00:00:00:09", ip="10.213.0.11", name="web-9"),  # same IP
        Reservation(mac="52:54:00:00:00:09", ip="10.213.0.99", name="web-1"),  # same name
    ],
    ids=["mac", "ip", "name"],
)
def test_conflicting_reservation_is_refused_and_names_the_holder(
    h: Harness, other: Reservation
) -> None:
    mine = Reservation(mac="52:54:00:00:00:01", ip="10.213.0.11", name="web-1")
    h.hv.add_reservation("orchlab", mine)
    with pytest.raises(HypervisorError, match="conflicts with existing 52:54:00:00:00:01 10.213.0.11"):
        h.hv.add_reservation("orchlab", other)
    assert h.hv.list_reservations("orchlab") == [mine]


def test_verbs_on_a_missing_network_raise_gone(h: Harness) -> None:
    r = Reservation("52:54:00:00:00:01", "10.0.0.2", "x")
    calls: list[Callable[[], object]] = [
        lambda: h.hv.network_info("nope"),
        lambda: h.hv.list_reservations("nope"),
        lambda: h.hv.leased_addresses("nope"),
        lambda: h.hv.add_reservation("nope", r),
        lambda: h.hv.remove_reservation("nope", r),
    ]
    for call in calls:
        with pytest.raises(Gone) as info:
            call()
        assert not isinstance(info.value, InvalidInput) and info.value.exit_code == 1


# --- storage --------------------------------------------------------------------------------
def test_volumes_create_list_delete(h: Harness) -> None:
    before = h.hv.pool_info(POOL)
    assert before.active and before.path == POOL_PATH
    overlay = h.hv.create_overlay(
        POOL, name="web-1-os.qcow2", backing_path=BASE_IMAGE, backing_format="qcow2",
        capacity_bytes=64 * MiB,
    )
    data = h.hv.create_volume(POOL, name="web-1-data0.qcow2", capacity_bytes=8 * MiB)
    assert overlay.path == f"{POOL_PATH}/web-1-os.qcow2"
    assert (overlay.format, overlay.capacity_bytes) == ("qcow2", 64 * MiB)
    assert (data.format, data.capacity_bytes) == ("qcow2", 8 * MiB)
    assert [v.name for v in h.hv.list_volumes(POOL)] == ["web-1-data0.qcow2", "web-1-os.qcow2"]
    assert h.hv.pool_info(POOL).available_bytes < before.available_bytes

    h.hv.delete_volume(POOL, "web-1-os.qcow2")
    h.hv.delete_volume(POOL, "web-1-os.qcow2")  # missing already: no error
    h.hv.delete_volume(POOL, "web-1-data0.qcow2")
    assert h.hv.list_volumes(POOL) == []
    assert h.hv.pool_info(POOL).available_bytes == before.available_bytes


def test_find_volume_is_one_volume_as_listed(h: Harness) -> None:
    h.hv.create_overlay(POOL, name="web-1-os.qcow2", backing_path=BASE_IMAGE,
                        backing_format="qcow2", capacity_bytes=64 * MiB)
    h.hv.create_volume(POOL, name="web-1-data0.qcow2", capacity_bytes=8 * MiB)
    for listed in h.hv.list_volumes(POOL):
        assert h.hv.find_volume(POOL, listed.name) == listed
    assert h.hv.find_volume(POOL, "web-1-data1.qcow2") is None
    assert h.hv.find_volume(POOL, "web-1-os") is None  # a name, not a prefix

    h.hv.delete_volume(POOL, "web-1-os.qcow2")
    assert h.hv.find_volume(POOL, "web-1-os.qcow2") is None
    assert h.hv.find_volume(POOL, "web-1-data0.qcow2") is not None


def test_creating_a_volume_twice_is_refused(h: Harness) -> None:
    h.hv.create_volume(POOL, name="web-1-data0.qcow2", capacity_bytes=MiB)
    with pytest.raises(HypervisorError):
        h.hv.create_volume(POOL, name="web-1-data0.qcow2", capacity_bytes=MiB)


@pytest.mark.parametrize("bad", ["../etc/passwd", "a/b.qcow2", ".hidden", ""])
def test_unsafe_volume_names_are_invalid_input(h: Harness, bad: str) -> None:
    with pytest.raises(InvalidInput):
        h.hv.create_volume(POOL, name=bad, capacity_bytes=MiB)
    with pytest.raises(InvalidInput):
        h.hv.upload_volume(POOL, name=bad, data=b"x")
    path, sha = h.image()
    with pytest.raises(InvalidInput):
        h.hv.upload_file(POOL, name=bad, path=path, fmt="raw", sha256=sha)
    with pytest.raises(InvalidInput):
        h.hv.delete_volume(POOL, bad)
    with pytest.raises(InvalidInput):
        h.hv.read_volume_tail(POOL, bad, max_bytes=16)
    with pytest.raises(InvalidInput):
        h.hv.find_volume(POOL, bad)


def test_upload_formats_and_backing_format_are_the_seams_rules(h: Harness) -> None:
    with pytest.raises(InvalidInput, match=", ".join(UPLOAD_FORMATS)):
        h.hv.upload_volume(POOL, name="web-1-seed.img", data=b"x", fmt="vmdk")
    path, sha = h.image()
    with pytest.raises(InvalidInput, match=", ".join(UPLOAD_FORMATS)):
        h.hv.upload_file(POOL, name="tiny-1.vmdk", path=path, fmt="vmdk", sha256=sha)
    with pytest.raises(InvalidInput, match="never probed"):
        h.hv.create_overlay(POOL, name="web-1-os.qcow2", backing_path=BASE_IMAGE,
                            backing_format="", capacity_bytes=MiB)
    assert h.hv.list_volumes(POOL) == []  # refused before acting


def test_verbs_on_a_missing_pool_raise_gone(h: Harness) -> None:
    path, sha = h.image()
    calls: list[Callable[[], object]] = [
        lambda: h.hv.pool_info("nope"),
        lambda: h.hv.list_volumes("nope"),
        lambda: h.hv.find_volume("nope", "x.qcow2"),
        lambda: h.hv.create_volume("nope", name="x.qcow2", capacity_bytes=MiB),
        lambda: h.hv.create_overlay("nope", name="x.qcow2", backing_path=BASE_IMAGE,
                                    backing_format="qcow2", capacity_bytes=MiB),
        lambda: h.hv.upload_volume("nope", name="x.iso", data=b"x", fmt="iso"),
        lambda: h.hv.upload_file("nope", name="x.raw", path=path, fmt="raw", sha256=sha),
        lambda: h.hv.delete_volume("nope", "x.qcow2"),
        lambda: h.hv.read_volume_tail("nope", "x-console.log", max_bytes=16),
    ]
    for call in calls:
        with pytest.raises(Gone) as info:
            call()
        assert not isinstance(info.value, InvalidInput) and info.value.exit_code == 1


def test_upload_volume(h: Harness) -> None:
    payload = b"cidata" * 1000
    if h.kind == "libvirt":
        # The test driver has no virStorageVolUpload: the adapter must say so and leave no
        # empty volume behind that could pass for a seed. (Real uploads: the lab smoke test.)
        with pytest.raises(HypervisorError, match="not supported"):
            h.hv.upload_volume(POOL, name="web-1-seed.iso", data=payload, fmt="iso")
        assert h.hv.list_volumes(POOL) == []
        return
    h.hv.upload_volume(POOL, name="web-1-seed.iso", data=b"old", fmt="iso")
    info = h.hv.upload_volume(POOL, name="web-1-seed.iso", data=payload, fmt="iso")
    assert (info.name, info.format, info.capacity_bytes) == ("web-1-seed.iso", "iso", len(payload))
    assert [v.capacity_bytes for v in h.hv.list_volumes(POOL)] == [len(payload)]


def test_upload_file_refuses_bad_input_before_acting(h: Harness) -> None:
    path, sha = h.image()
    cases: list[tuple[str, Callable[[], object]]] = [
        ("cannot read", lambda: h.hv.upload_file(POOL, name="tiny-1.raw", fmt="raw", sha256=sha,
                                                 path=str(h.files / "missing.raw"))),
        ("not a regular file", lambda: h.hv.upload_file(POOL, name="tiny-1.raw", fmt="raw",
                                                        sha256=sha, path=str(h.files))),
        ("not a sha256", lambda: h.hv.upload_file(POOL, name="tiny-1.raw", path=path, fmt="raw",
                                                  sha256="abc")),
        ("not a sha256", lambda: h.hv.upload_file(POOL, name="tiny-1.raw", path=path, fmt="raw",
                                                  sha256="g" * 64)),
    ]
    before = h.snapshot()
    for message, call in cases:
        with pytest.raises(InvalidInput, match=message):
            call()
    assert h.snapshot() == before


def test_upload_file(h: Harness) -> None:
    path, sha = h.image()
    if h.kind == "libvirt":
        # The test driver has no virStorageVolUpload: refused, saying so, and no volume is left
        # that could pass for an image. The adapter's streaming, reuse and mismatch are held
        # by test_upload_stream.py, the fake's by tests/unit/test_fake_hypervisor.py.
        with pytest.raises(HypervisorError, match="not supported") as info:
            h.hv.upload_file(POOL, name="tiny-1.raw", path=path, fmt="raw", sha256=sha)
        assert not isinstance(info.value, InvalidInput)
        assert h.hv.list_volumes(POOL) == []
        return
    size = Path(path).stat().st_size
    info = h.hv.upload_file(POOL, name="tiny-1.raw", path=path, fmt="raw", sha256=sha.upper())
    assert (info.name, info.format, info.capacity_bytes) == ("tiny-1.raw", "raw", size)
    assert info.path == f"{POOL_PATH}/tiny-1.raw"
    assert h.hv.list_volumes(POOL) == [info]


# --- the end of a volume: read_volume_tail ----------------------------------------------------
def test_read_volume_tail(h: Harness) -> None:
    if h.kind == "libvirt":
        # The test driver has no virStorageVolDownload: refused, saying so; neither Gone nor
        # an empty read, which would pass for a console log with nothing in it yet. (The
        # adapter's download: test_download_tail.py; real logs: tests/vm/test_boot_diagnostics.py)
        h.hv.create_volume(POOL, name="web-1-console.log", capacity_bytes=4096)
        with pytest.raises(HypervisorError, match="not supported") as info:
            h.hv.read_volume_tail(POOL, "web-1-console.log", max_bytes=16)
        assert not isinstance(info.value, Gone | InvalidInput)
        return
    log = b"".join(b"[%8.6f] line %d\n" % (i / 7, i) for i in range(200))
    h.hv.upload_volume(POOL, name="web-1-console.log", data=log)
    assert h.hv.read_volume_tail(POOL, "web-1-console.log", max_bytes=40) == log[-40:]
    assert h.hv.read_volume_tail(POOL, "web-1-console.log", max_bytes=len(log)) == log
    assert h.hv.read_volume_tail(POOL, "web-1-console.log", max_bytes=10 * len(log)) == log
    h.hv.upload_volume(POOL, name="web-1-console.log.0", data=b"")
    assert h.hv.read_volume_tail(POOL, "web-1-console.log.0", max_bytes=16) == b""


def test_read_volume_tail_of_a_missing_volume_is_gone(h: Harness) -> None:
    with pytest.raises(Gone) as info:
        h.hv.read_volume_tail(POOL, "web-1-console.log", max_bytes=16)
    assert not isinstance(info.value, InvalidInput) and info.value.exit_code == 1


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_read_volume_tail_refuses_a_bound_below_one_before_acting(h: Harness,
                                                                 bad: Any) -> None:
    h.hv.create_volume(POOL, name="web-1-console.log", capacity_bytes=4096)
    before = h.snapshot()
    with pytest.raises(InvalidInput, match="max_bytes"):
        h.hv.read_volume_tail(POOL, "web-1-console.log", max_bytes=bad)
    assert h.snapshot() == before


# --- which verbs change something: MUTATING_VERBS, checked both ways ----------------------
def _populate(h: Harness) -> None:
    """A running and a stopped domain of ours, a data volume and a reservation."""
    h.hv.define_domain(make_domain(h, "web-1", owner=Ownership("web", 1, 1)))
    h.hv.start("web-1")
    h.hv.define_domain(make_domain(h, "web-2", owner=Ownership("web", 1, 2)))
    h.hv.create_volume(POOL, name="web-1-data0.qcow2", capacity_bytes=MiB)
    h.hv.add_reservation("orchlab", Reservation("52:54:00:00:00:01", "10.213.0.11", "web-1"))


# What each read-only verb is called with, by parameter name: a domain name both running and
# stopped (so that neither a start nor a stop could pass for a read).
_READ_ARGS: dict[str, tuple[str, ...]] = {
    "name": ("web-1", "web-2"), "pool": (POOL,), "network": ("orchlab",),
}


# Read-only verbs whose arguments are not read off _READ_ARGS: the (args, kwargs) of each call.
_READ_CALLS: dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]] = {
    "read_volume_tail": [((POOL, "web-1-data0.qcow2"), {"max_bytes": 16}),
                         ((POOL, "web-1-data0.qcow2"), {"max_bytes": 2 * MiB})],
}


# close ends the connection, and with it the test driver's objects: not a read to compare
@pytest.mark.parametrize("verb", sorted(set(VERBS) - MUTATING_VERBS - {"close"}))
def test_every_verb_not_in_mutating_verbs_only_reads(h: Harness, verb: str) -> None:
    _populate(h)
    before = h.snapshot()
    params = [p for p in inspect.signature(getattr(Hypervisor, verb)).parameters if p != "self"]
    calls = _READ_CALLS.get(verb) or [
        (args, {}) for args in itertools.product(*(_READ_ARGS[p] for p in params))]
    for args, kwargs in calls:
        if verb == "read_volume_tail" and h.kind == "libvirt":
            with pytest.raises(HypervisorError, match="not supported"):  # no download there
                getattr(h.hv, verb)(*args, **kwargs)
        else:
            getattr(h.hv, verb)(*args, **kwargs)
        assert h.snapshot() == before, f"{verb}{args} changed the hypervisor"


_R1 = Reservation("52:54:00:00:00:01", "10.213.0.11", "web-1")
# verb -> (set-up, the call of the verb): each call changes something when it runs after its
# set-up. Keyed by every mutating verb, so a new one must say how it changes the hypervisor.
_CHANGES: dict[str, tuple[Callable[[Harness], object], Callable[[Harness, Any], object]]] = {
    "define_domain": (lambda h: make_domain(h, "web-1"), lambda h, dom: h.hv.define_domain(dom)),
    "start": (lambda h: h.hv.define_domain(make_domain(h, "web-1")),
              lambda h, _: h.hv.start("web-1")),
    "shutdown": (lambda h: (h.hv.define_domain(make_domain(h, "web-1")), h.hv.start("web-1")),
                 lambda h, _: h.hv.shutdown("web-1")),
    "destroy": (lambda h: (h.hv.define_domain(make_domain(h, "web-1")), h.hv.start("web-1")),
                lambda h, _: h.hv.destroy("web-1")),
    "undefine": (lambda h: h.hv.define_domain(make_domain(h, "web-1")),
                 lambda h, _: h.hv.undefine("web-1")),
    "create_overlay": (lambda h: None, lambda h, _: h.hv.create_overlay(
        POOL, name="web-1-os.qcow2", backing_path=BASE_IMAGE, backing_format="qcow2",
        capacity_bytes=MiB)),
    "create_volume": (lambda h: None, lambda h, _: h.hv.create_volume(
        POOL, name="web-1-data0.qcow2", capacity_bytes=MiB)),
    "upload_volume": (lambda h: None, lambda h, _: h.hv.upload_volume(
        POOL, name="web-1-seed.iso", data=b"seed", fmt="iso")),
    "upload_file": (lambda h: h.image(), lambda h, image: h.hv.upload_file(
        POOL, name="tiny-1.raw", path=image[0], fmt="raw", sha256=image[1])),
    "delete_volume": (lambda h: h.hv.create_volume(POOL, name="web-1-data0.qcow2",
                                                   capacity_bytes=MiB),
                      lambda h, _: h.hv.delete_volume(POOL, "web-1-data0.qcow2")),
    "add_reservation": (lambda h: None, lambda h, _: h.hv.add_reservation("orchlab", _R1)),
    "remove_reservation": (lambda h: h.hv.add_reservation("orchlab", _R1),
                           lambda h, _: h.hv.remove_reservation("orchlab", _R1)),
}


def test_every_mutating_verb_has_a_change_case() -> None:
    assert set(_CHANGES) == MUTATING_VERBS


@pytest.mark.parametrize("verb", sorted(MUTATING_VERBS))
def test_every_mutating_verb_changes_something(h: Harness, verb: str) -> None:
    set_up, call = _CHANGES[verb]
    if verb in ("upload_volume", "upload_file") and h.kind == "libvirt":
        # the test driver cannot upload: refused, and nothing changed (test_upload_volume)
        before = h.snapshot()
        with pytest.raises(HypervisorError, match="not supported"):
            call(h, set_up(h))
        assert h.snapshot() == before
        return
    made = set_up(h)
    before = h.snapshot()
    call(h, made)
    assert h.snapshot() != before, f"{verb} changed nothing"


# --- host -----------------------------------------------------------------------------------
def test_host_info_describes_the_host(h: Harness) -> None:
    info = h.hv.host_info()
    assert info.hostname
    assert 0 < info.memory_bytes_total
    assert 0 <= info.memory_bytes_free <= info.memory_bytes_available <= info.memory_bytes_total
    assert info.cpus >= 1
    assert set(info.domain_types) <= set(DOMAIN_TYPES)
    assert list(info.domain_types) == sorted(set(info.domain_types))
    if h.kind == "libvirt":
        # the test driver's canned node: the machine's hostname, 16 CPUs, and i686 guests of
        # type 'test' only, so no x86_64 kvm or qemu (a qemu driver's: test_domain_types_of)
        assert info.hostname == socket.gethostname()
        assert info.cpus == 16 and info.domain_types == ()
        # no node memory statistics (virNodeGetMemoryStats unsupported): no caches to count,
        # so all it has for guests is its free memory (3 MiB of a canned 3 GiB)
        assert info.memory_bytes_total == 3072 * MiB
        assert info.memory_bytes_available == info.memory_bytes_free == 3 * MiB
    else:
        assert info == DEFAULT_HOST  # nothing runs yet: all its free memory


def test_running_domains_leave_free_memory_at_most_as_it_was(h: Harness) -> None:
    idle = h.hv.host_info()
    h.hv.define_domain(make_domain(h, "web-1"))
    h.hv.start("web-1")
    busy = h.hv.host_info()
    assert busy.memory_bytes_total == idle.memory_bytes_total
    assert busy.memory_bytes_free <= idle.memory_bytes_free  # the fake: 128 MiB less
    assert busy.memory_bytes_available <= idle.memory_bytes_available


# --- connection -----------------------------------------------------------------------------
def test_unreachable_hypervisor_is_unavailable_with_a_hint(h: Harness) -> None:
    down = h.make_unavailable()
    with pytest.raises(HypervisorUnavailable) as info:
        down.list_domains()
    assert info.value.exit_code == 4 and info.value.temporary
    assert info.value.hint == UNAVAILABLE_HINT and "orch lab up" in info.value.hint
    down.close()


def test_close_is_idempotent(h: Harness) -> None:
    h.hv.close()
    h.hv.close()


# --- libvirt only: what only the real adapter can show ------------------------------------
@pytest.mark.libvirt
def test_libvirt_overlay_pins_backing_path_and_format_in_volume_xml() -> None:
    h = _libvirt_harness()
    try:
        h.hv.create_overlay(
            POOL, name="web-1-os.qcow2", backing_path=BASE_IMAGE, backing_format="qcow2",
            capacity_bytes=64 * MiB,
        )
        assert isinstance(h.hv, LibvirtHypervisor)
        conn: Any = h.hv._connection()
        xml = conn.storagePoolLookupByName(POOL).storageVolLookupByName("web-1-os.qcow2").XMLDesc(0)
        root = ET.fromstring(xml)
        assert root.findtext("./backingStore/path") == BASE_IMAGE
        backing_format = root.find("./backingStore/format")
        assert backing_format is not None and backing_format.get("type") == "qcow2"
        assert root.findtext("./target/permissions/mode") == "0644"
    finally:
        h.hv.close()


@pytest.mark.libvirt
def test_libvirt_paused_domain_maps_to_paused_and_can_be_destroyed() -> None:
    h = _libvirt_harness()
    try:
        h.hv.define_domain(make_domain(h, "web-1"))
        h.hv.start("web-1")
        conn: Any = h.hv._connection()  # type: ignore[attr-defined]
        conn.lookupByName("web-1").suspend()
        assert h.hv.domain_state("web-1") is PowerState.PAUSED
        h.hv.destroy("web-1")
        assert h.hv.domain_state("web-1") is PowerState.STOPPED
    finally:
        h.hv.close()


CAPABILITIES = (Path(__file__).parent / "data" / "capabilities-qemu.xml").read_text()


@pytest.mark.libvirt
@pytest.mark.parametrize(("capabilities", "types"), [
    (CAPABILITIES, ("kvm", "qemu")),
    (CAPABILITIES.replace("<domain type='kvm'/>", ""), ("qemu",)),  # no /dev/kvm
    (CAPABILITIES.replace("name='x86_64'", "name='aarch64'"), ()),  # i686 guests do not count
    (CAPABILITIES.replace("<os_type>hvm", "<os_type>xen"), ()),
    (CAPABILITIES.replace("<domain type='kvm'/>", "<domain type='kvm'/><domain type='xen'/>"),
     ("kvm", "qemu")),
], ids=["kvm-and-qemu", "qemu-only", "no-x86_64", "not-hvm", "others-left-out"])
def test_domain_types_of(capabilities: str, types: tuple[str, ...]) -> None:
    assert domain_types_of(capabilities) == types


@pytest.mark.libvirt
@pytest.mark.parametrize(("stats", "memory"), [
    # a 24 GiB machine with 3 GiB of page cache: all of it can go to guests
    ({"total": 24 * MiB, "free": 20 * MiB, "buffers": MiB, "cached": 2 * MiB},
     (24 * 2**30, 20 * 2**30, 23 * 2**30)),
    ({"total": 4 * MiB, "free": 2 * MiB}, (4 * 2**30, 2 * 2**30, 2 * 2**30)),  # no caches told
    ({"total": MiB, "free": MiB, "buffers": MiB, "cached": MiB}, (2**30, 2**30, 2**30)),
], ids=["with-cache", "no-cache-keys", "never-above-total"])
def test_node_memory_counts_buffers_and_cache_as_available(
        stats: dict[str, int], memory: tuple[int, int, int]) -> None:
    assert node_memory(stats) == memory  # the statistics are in KiB


@pytest.mark.libvirt
def test_libvirt_lists_foreign_domains_without_owner() -> None:
    h = _libvirt_harness()
    try:
        # The test driver ships a domain "test" that orchestrator never created.
        by_name = {d.name: d for d in h.hv.list_domains()}
        assert by_name["test"].owner is None
        assert by_name["test"].state is PowerState.RUNNING
    finally:
        h.hv.close()


@pytest.mark.libvirt
def test_libvirt_errors_of_missing_objects_translate_to_gone() -> None:
    """libvirt's own "no such domain / pool / network / volume" errors, met at any call (an
    object that vanishes between our lookup and our action), are Gone, never bad input."""
    h = _libvirt_harness()
    try:
        conn: Any = h.hv._connection()  # type: ignore[attr-defined]
        lookups: dict[str, Callable[[], object]] = {
            "domain": lambda: conn.lookupByName("nope"),
            "pool": lambda: conn.storagePoolLookupByName("nope"),
            "network": lambda: conn.networkLookupByName("nope"),
            "volume": lambda: conn.storagePoolLookupByName(POOL).storageVolLookupByName("nope"),
        }
        for what, lookup in lookups.items():
            with pytest.raises(libvirt.libvirtError) as raised:
                lookup()
            error = translate_error(raised.value, f"look up {what}")
            assert type(error) is Gone, (what, error)
            assert error.exit_code == 1 and not error.temporary
    finally:
        h.hv.close()

