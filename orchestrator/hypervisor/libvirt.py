"""The libvirt adapter: the ``Hypervisor`` protocol on a real (or ``test:///``) libvirt connection.

Owned here: ``LibvirtHypervisor``, the one table mapping libvirt domain states to
``PowerState``, and the one function translating ``libvirt.libvirtError`` into
``orchestrator.errors``. This is the ONLY module of the project that imports ``libvirt``.
Called by: cli.app (which makes the adapter; the use cases and the engine reach it only through
the ``Hypervisor`` protocol of ``hypervisor.base``)

Every verb is synchronous and idempotent where the protocol says so ("already off", "already
missing" are not errors). Domain XML comes from ``domainxml.Domain.to_xml``; volume and
DHCP-host XML from ``libvirtxml`` (ElementTree, never string formatting).

Remote hosts (``qemu+tcp://``, ``qemu+tls://``, ``qemu+ssh://``, ...; ``remote.remote_of``):
before the process's first connection libvirt's default event loop is registered and run by
a daemon thread (``EVENT_LOOP``), and every remote connection gets
``setKeepAlive(*remote.KEEPALIVE)``: a host that silently drops packets closes the
connection within 8-12 s, and the call in flight raises ``HypervisorUnavailable`` instead of
hanging (without keepalive it still hung after 45 s). The next verb reopens the connection;
for tcp and tls its TCP handshake is tried first (``remote.probe``, ``CONNECT_TIMEOUT``:
libvirt's own connect has no timeout, about two minutes of SYN retries to a blackholed
host), and every remote open is given up after ``OPEN_TIMEOUT`` (a daemon that accepts and
never answers, an ssh host that drops packets; the late connection is closed). Local URIs (``qemu:///system``, ``qemu+unix://``, ``test:///``) get no keepalive: a
unix socket fails at once when its daemon dies, and the test driver refuses keepalive.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import libvirt

from orchestrator.errors import (
    Gone,
    HypervisorError,
    HypervisorUnavailable,
    OrchError,
)
from orchestrator.hypervisor.base import (
    UNAVAILABLE_HINT,
    DomainInfo,
    HostInfo,
    NetworkInfo,
    PoolInfo,
    PowerState,
    Reservation,
    VolumeInfo,
    check_backing_format,
    check_sha256,
    check_tail_bytes,
    check_upload_format,
    check_volume_name,
    reservation_present,
    same_mac,
    upload_file_size,
)
from orchestrator.hypervisor.domainxml import Domain, Ownership, parse_files, parse_owner
from orchestrator.hypervisor.eventloop import EventLoop
from orchestrator.hypervisor.libvirtxml import (
    domain_types_of,
    host_xml,
    prefix_from_netmask,
    volume_xml,
)
from orchestrator.hypervisor.remote import (
    CONNECT_TIMEOUT,
    KEEPALIVE,
    OPEN_TIMEOUT,
    probe,
    remote_of,
)
from orchestrator.hypervisor.sparse import Sha256, section_at

__all__ = ["EVENT_LOOP", "POWER_STATES", "LibvirtHypervisor", "node_memory", "translate_error"]

# libvirt prints every error to stderr by default; we translate them instead.
libvirt.registerErrorHandler(lambda *_args: None, None)

# The process's one libvirt event loop (keepalive needs it); started before the first open.
EVENT_LOOP = EventLoop(libvirt)

# The one table from libvirt's domain states to ours (nova's guest.py style).
POWER_STATES: dict[int, PowerState] = {
    libvirt.VIR_DOMAIN_NOSTATE: PowerState.PAUSED,  # transient; neither up nor down yet
    libvirt.VIR_DOMAIN_RUNNING: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: PowerState.RUNNING,  # running, waiting on a resource
    libvirt.VIR_DOMAIN_PAUSED: PowerState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: PowerState.SHUTTING_DOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: PowerState.STOPPED,
    libvirt.VIR_DOMAIN_CRASHED: PowerState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: PowerState.PAUSED,
}

# Error codes whose meaning does not depend on context.
_ERROR_KINDS: dict[int, type[OrchError]] = {
    libvirt.VIR_ERR_NO_DOMAIN: Gone,
    libvirt.VIR_ERR_NO_STORAGE_VOL: Gone,
    libvirt.VIR_ERR_NO_NETWORK: Gone,
    libvirt.VIR_ERR_NO_STORAGE_POOL: Gone,
    libvirt.VIR_ERR_NO_CONNECT: HypervisorUnavailable,
    libvirt.VIR_ERR_INVALID_CONN: HypervisorUnavailable,
    libvirt.VIR_ERR_RPC: HypervisorUnavailable,
    libvirt.VIR_ERR_AUTH_FAILED: HypervisorUnavailable,
    libvirt.VIR_ERR_AUTH_UNAVAILABLE: HypervisorUnavailable,
}

# "This driver does not take that flag": retry the call with fewer flags.
_UNSUPPORTED_FLAGS = (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT)

_UNDEFINE_FLAG_SETS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM,
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA,
    0,
)

_UPLOAD_CHUNK = 256 * 1024


def node_memory(stats: Mapping[str, int]) -> tuple[int, int, int]:
    """(total, free, available) bytes from libvirt's node memory statistics (KiB):
    available is free + buffers + cached, as the kernel gives its caches back to a guest that
    needs the memory; each at most the total, free at most available."""
    total = int(stats["total"]) * 1024
    free = min(int(stats["free"]) * 1024, total)
    cache = (int(stats.get("buffers", 0)) + int(stats.get("cached", 0))) * 1024
    return total, free, min(free + cache, total)


def translate_error(
    exc: libvirt.libvirtError, action: str, *, connecting: bool = False, conn_dead: bool = False
) -> OrchError:
    """The orchestrator error for a libvirt error raised while doing ``action``."""
    code = exc.get_error_code()
    message = f"{action}: {exc.get_error_message() or exc}"
    kind = _ERROR_KINDS.get(code)
    if kind is None:
        if connecting or conn_dead:
            kind = HypervisorUnavailable
        elif code == libvirt.VIR_ERR_SYSTEM_ERROR and exc.get_error_domain() == libvirt.VIR_FROM_RPC:
            kind = HypervisorUnavailable  # the socket went away under us
        else:
            kind = HypervisorError
    if kind is HypervisorUnavailable:
        return HypervisorUnavailable(message, hint=UNAVAILABLE_HINT)
    return kind(message)


def _storage(method: Callable[..., Any]) -> Callable[..., Any]:
    """Storage calls one at a time: libvirt refuses a pool refresh (and other pool work)
    while a volume job of another thread runs ("pool has asynchronous jobs running")."""

    @functools.wraps(method)
    def locked(self: LibvirtHypervisor, *args: Any, **kwargs: Any) -> Any:
        with self._storage_lock:
            return method(self, *args, **kwargs)

    return locked


class _Opening:
    """``open_connection(uri)`` in a thread of its own, waited for at most a timeout; a
    connection that arrives after the wait was given up is closed at once."""

    def __init__(self, open_connection: Callable[[str], Any], uri: str) -> None:
        self._open, self._uri = open_connection, uri
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._abandoned = False
        self._conn: Any = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, name=f"libvirt-open {uri}", daemon=True).start()

    def _run(self) -> None:
        conn: Any = None
        try:
            conn = self._open(self._uri)
        except libvirt.libvirtError as exc:
            self._error = exc  # raised in the waiting thread
        finally:
            with self._lock:
                self._conn = conn
                self._done.set()
                late = self._abandoned
            if late and conn is not None:
                try:
                    conn.close()
                except libvirt.libvirtError:
                    pass

    def result(self, timeout: float) -> Any:
        """The connection; its error; HypervisorUnavailable after ``timeout`` seconds."""
        self._done.wait(timeout)
        with self._lock:
            if not self._done.is_set():
                self._abandoned = True
                raise HypervisorUnavailable(
                    f"connect to {self._uri}: no answer within {timeout:g}s (the host or its "
                    "libvirtd does not respond)", hint=UNAVAILABLE_HINT)
        if self._error is not None:
            raise self._error
        if self._conn is None:  # the open raised something else: its thread printed it
            raise HypervisorError(f"connect to {self._uri}: the open failed")
        return self._conn


class LibvirtHypervisor:
    """``Hypervisor`` on one libvirt connection, opened on first use and reopened if it died."""

    def __init__(
        self,
        uri: str,
        *,
        keepalive: tuple[int, int] | None = KEEPALIVE,
        connect_timeout: float = CONNECT_TIMEOUT,
        open_timeout: float = OPEN_TIMEOUT,
        open_connection: Callable[[str], Any] | None = None,
    ) -> None:
        """``keepalive``: (interval, count) for remote connections, None for none (the bench
        compares); the timeouts bound a remote (re)connect (``hypervisor.remote``);
        ``open_connection``: ``libvirt.open`` unless a test stands in for it."""
        self._uri = uri
        self._remote = remote_of(uri)
        self._keepalive = keepalive
        self._connect_timeout = connect_timeout
        self._open_timeout = open_timeout
        self._open = open_connection
        self._conn: Any = None
        self._storage_lock = threading.RLock()
        self._connect_lock = threading.Lock()

    @property
    def uri(self) -> str:
        return self._uri

    # --- connection and error plumbing -------------------------------------------------------
    def _connection(self) -> Any:
        conn = self._conn
        if conn is not None and self._alive(conn):
            return conn
        with self._connect_lock:  # worker threads whose calls all failed reopen once
            if self._conn is not None and self._alive(self._conn):
                return self._conn
            return self._reopen()

    def _reopen(self) -> Any:
        if self._conn is not None:
            self.close()  # dead (keepalive timeout, daemon gone): release it, open anew
        EVENT_LOOP.ensure()  # before any connection: keepalive needs the loop
        remote = self._remote
        if remote is not None and remote.probe_port is not None:
            try:
                probe(remote.host, remote.probe_port, timeout=self._connect_timeout)
            except OSError as exc:
                reason = str(exc) or type(exc).__name__
                if isinstance(exc, TimeoutError):
                    reason = f"no answer within {self._connect_timeout:g}s"
                raise HypervisorUnavailable(
                    f"connect to {self._uri}: {remote.host}:{remote.probe_port}: {reason}",
                    hint=UNAVAILABLE_HINT) from exc
        open_connection = self._open or libvirt.open
        try:
            if remote is None:
                conn = open_connection(self._uri)  # a unix socket or in-process: never hangs
            else:
                conn = _Opening(open_connection, self._uri).result(self._open_timeout)
        except libvirt.libvirtError as exc:
            raise translate_error(exc, f"connect to {self._uri}", connecting=True) from exc
        if remote is not None and self._keepalive is not None:
            self._set_keepalive(conn, *self._keepalive)
        self._conn = conn
        return conn

    def _set_keepalive(self, conn: Any, interval: int, count: int) -> None:
        try:
            conn.setKeepAlive(interval, count)  # 1: the daemon predates keepalive; nothing to do
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
                return  # a driver without keepalive: nothing to set
            try:
                conn.close()
            except libvirt.libvirtError:
                pass
            raise translate_error(exc, f"keepalive on {self._uri}", connecting=True) from exc

    @staticmethod
    def _alive(conn: Any) -> bool:
        try:
            return bool(conn.isAlive())
        except libvirt.libvirtError:
            return False

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except libvirt.libvirtError as exc:
            dead = self._conn is not None and not self._alive(self._conn)
            raise translate_error(exc, action, conn_dead=dead) from exc

    def _domain(self, name: str) -> Any:
        conn = self._connection()
        with self._errors(f"domain {name}"):
            return conn.lookupByName(name)

    def _pool(self, pool: str) -> Any:
        conn = self._connection()
        with self._errors(f"storage pool {pool}"):
            return conn.storagePoolLookupByName(pool)

    def _network(self, network: str) -> Any:
        conn = self._connection()
        with self._errors(f"network {network}"):
            return conn.networkLookupByName(network)

    # --- domains ---------------------------------------------------------------------------
    def define_domain(self, domain: Domain) -> None:
        conn = self._connection()
        if domain.uuid is None:
            # libvirt gives a definition without <uuid> a new one, then refuses it as a second
            # domain of that name: a redefinition must carry the existing domain's UUID.
            try:
                existing = self._domain(domain.name)
            except Gone:
                pass
            else:
                with self._errors(f"UUID of domain {domain.name}"):
                    domain = dataclasses.replace(domain, uuid=str(existing.UUIDString()))
        with self._errors(f"define domain {domain.name}"):
            conn.defineXML(domain.to_xml())

    def start(self, name: str) -> None:
        dom = self._domain(name)
        with self._errors(f"start domain {name}"):
            if dom.isActive():
                return
            try:
                dom.create()
            except libvirt.libvirtError:
                # Started by someone else between our check and our call: that is success.
                if dom.isActive():
                    return
                raise

    def shutdown(self, name: str) -> None:
        dom = self._domain(name)
        with self._errors(f"shut down domain {name}"):
            if not dom.isActive():
                return
            try:
                dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            except libvirt.libvirtError as exc:
                if not dom.isActive():
                    return
                if exc.get_error_code() not in _UNSUPPORTED_FLAGS:
                    raise
                dom.shutdown()  # this driver picks its own method; ACPI on qemu

    def destroy(self, name: str) -> None:
        dom = self._domain(name)
        with self._errors(f"destroy domain {name}"):
            if not dom.isActive():
                return
            try:
                dom.destroy()
            except libvirt.libvirtError:
                if not dom.isActive():
                    return
                raise

    def undefine(self, name: str) -> None:
        try:
            dom = self._domain(name)
        except Gone:
            return
        with self._errors(f"undefine domain {name}"):
            if dom.isActive():
                # libvirt would keep it running as a transient domain: refuse instead.
                raise HypervisorError(f"undefine domain {name}: it is running; destroy it first")
            self._with_fewer_flags(dom.undefineFlags, _UNDEFINE_FLAG_SETS)

    @staticmethod
    def _with_fewer_flags(call: Callable[[int], Any], flag_sets: tuple[int, ...]) -> Any:
        for flags in flag_sets[:-1]:
            try:
                return call(flags)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in _UNSUPPORTED_FLAGS:
                    raise
        return call(flag_sets[-1])

    def domain_state(self, name: str) -> PowerState:
        try:
            dom = self._domain(name)
        except Gone:
            return PowerState.MISSING
        try:
            with self._errors(f"state of domain {name}"):
                state, reason = dom.state()
        except Gone:
            return PowerState.MISSING
        return self._power_state(int(state), int(reason))

    @staticmethod
    def _power_state(state: int, reason: int) -> PowerState:
        # on_crash=destroy turns a crash into SHUTOFF; keep the crash visible to the engine.
        if state == libvirt.VIR_DOMAIN_SHUTOFF and reason == libvirt.VIR_DOMAIN_SHUTOFF_CRASHED:
            return PowerState.CRASHED
        return POWER_STATES.get(state, PowerState.PAUSED)

    def domain_owner(self, name: str) -> Ownership | None:
        try:
            dom = self._domain(name)
            with self._errors(f"XML of domain {name}"):
                return parse_owner(str(dom.XMLDesc(0)))
        except Gone:
            return None

    def list_domains(self) -> list[DomainInfo]:
        conn = self._connection()
        with self._errors("list domains"):
            doms = conn.listAllDomains(0)
        out: list[DomainInfo] = []
        for dom in doms:
            try:
                with self._errors("inspect domain"):
                    name = str(dom.name())
                    state, reason = dom.state()
                    xml = str(dom.XMLDesc(0))
            except Gone:
                continue  # undefined while we were listing
            out.append(DomainInfo(name, self._power_state(int(state), int(reason)),
                                  parse_owner(xml), parse_files(xml)))
        return sorted(out, key=lambda d: d.name)

    # --- storage ---------------------------------------------------------------------------
    @_storage
    def pool_info(self, pool: str) -> PoolInfo:
        p = self._pool(pool)
        with self._errors(f"storage pool {pool}"):
            active = bool(p.isActive())
            if active:
                p.refresh(0)
            _state, capacity, _allocation, available = p.info()
            path = ET.fromstring(p.XMLDesc(0)).findtext("./target/path", default="")
        return PoolInfo(pool, path, int(capacity), int(available), active)

    def _volume_info(self, vol: Any) -> VolumeInfo:
        _type, capacity, allocation = vol.info()
        root = ET.fromstring(vol.XMLDesc(0))
        fmt_el = root.find("./target/format")
        fmt = fmt_el.get("type", "raw") if fmt_el is not None else "raw"
        return VolumeInfo(str(vol.name()), str(vol.path()), fmt, int(capacity), int(allocation))

    def _create(self, pool: str, name: str, xml: str) -> VolumeInfo:
        p = self._pool(pool)
        with self._errors(f"create volume {name} in pool {pool}"):
            vol = p.createXML(xml, 0)
            return self._volume_info(vol)

    @_storage
    def create_overlay(
        self, pool: str, *, name: str, backing_path: str, backing_format: str, capacity_bytes: int
    ) -> VolumeInfo:
        check_volume_name(name)
        check_backing_format(name, backing_format)
        xml = volume_xml(
            name, capacity_bytes=capacity_bytes, fmt="qcow2", backing=(backing_path, backing_format)
        )
        return self._create(pool, name, xml)

    @_storage
    def create_volume(self, pool: str, *, name: str, capacity_bytes: int) -> VolumeInfo:
        check_volume_name(name)
        return self._create(pool, name, volume_xml(name, capacity_bytes=capacity_bytes, fmt="qcow2"))

    @_storage
    def upload_volume(self, pool: str, *, name: str, data: bytes, fmt: str = "raw") -> VolumeInfo:
        check_volume_name(name)
        check_upload_format(name, fmt)
        self.delete_volume(pool, name)
        info = self._create(pool, name, volume_xml(name, capacity_bytes=len(data), fmt=fmt))
        try:
            self._send(pool, name, data)
        except OrchError:
            # A volume without its content must not look like a finished seed.
            self.delete_volume(pool, name)
            raise
        return info

    def _send(self, pool: str, name: str, data: bytes) -> None:
        p = self._pool(pool)
        with self._errors(f"upload volume {name} to pool {pool}"):
            vol = p.storageVolLookupByName(name)

        def send(stream: Any) -> None:
            vol.upload(stream, 0, len(data), 0)
            view = memoryview(data)
            while view:
                sent = stream.send(bytes(view[:_UPLOAD_CHUNK]))
                if sent < 0:
                    raise HypervisorError(f"upload volume {name}: stream refused data")
                view = view[sent:]

        self._with_stream(f"upload volume {name} to pool {pool}", send)

    @_storage
    def upload_file(self, pool: str, *, name: str, path: str, fmt: str, sha256: str) -> VolumeInfo:
        # The volume is made as a sparse raw file of the file's size and the upload overwrites
        # all of it: a byte copy. (Made as qcow2, libvirt's own empty qcow2 is written first,
        # and its bytes past the end of a smaller image would stay behind the upload.) A dir
        # pool then reads the format from the content, so VolumeInfo.format is the image's.
        # The storage lock is held throughout: libvirt refuses other pool work during it.
        check_volume_name(name)
        check_upload_format(name, fmt)
        expected = check_sha256(name, sha256)
        size = upload_file_size(name, path)
        p = self._pool(pool)
        try:
            with self._errors(f"volume {name} in pool {pool}"):
                existing = p.storageVolLookupByName(name)
        except Gone:
            existing = None
        if existing is not None:
            same_size = self._file_size(existing, name) == size
            if same_size and self._read_back(existing, name) == expected:
                with self._errors(f"volume {name} in pool {pool}"):
                    return self._volume_info(existing)  # the image is there already
            self.delete_volume(pool, name)
        xml = volume_xml(name, capacity_bytes=size, fmt="raw", allocation_bytes=0)
        with self._errors(f"create volume {name} in pool {pool}"):
            vol = p.createXML(xml, 0)
        try:
            sent = self._stream_file(vol, name, path, size)
            arrived = self._read_back(vol, name)
            if arrived != expected:
                raise HypervisorError(
                    f"upload {name} to pool {pool}: sha256 {arrived} on arrival, expected "
                    f"{expected} ({path} read as {sent}); the volume was deleted")
            with self._errors(f"volume {name} in pool {pool}"):
                return self._volume_info(vol)
        except BaseException:
            # A volume without its verified content must not pass for an image.
            try:
                self.delete_volume(pool, name)
            except OrchError:
                pass  # unreachable now; the next upload_file finds it unverified and replaces it
            raise

    def _file_size(self, vol: Any, name: str) -> int:
        """The bytes of a volume's file (qcow2's own size, not its virtual size)."""
        with self._errors(f"size of volume {name}"):
            try:
                return int(vol.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2])
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in _UNSUPPORTED_FLAGS:
                    raise
                return int(vol.info()[1])

    def _stream_file(self, vol: Any, name: str, path: str, size: int) -> str:
        """Send the first ``size`` bytes of ``path`` into ``vol``, holes as holes, one chunk at
        a time; the sha256 of what was sent."""
        digest = Sha256()

        def read(_stream: Any, nbytes: int, fd: int) -> bytes:
            try:
                chunk = os.read(fd, nbytes)
            except OSError as exc:
                raise HypervisorError(f"upload {name}: reading {path}: {exc.strerror}") from exc
            digest.data(chunk)
            return chunk

        def skip(_stream: Any, length: int, fd: int) -> int:
            digest.hole(length)
            return os.lseek(fd, length, os.SEEK_CUR)

        def send(stream: Any) -> None:
            vol.upload(stream, 0, size, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
            stream.sparseSendAll(read, lambda _stream, fd: section_at(fd, size), skip, fd)

        fd = os.open(path, os.O_RDONLY)
        try:
            self._with_stream(f"upload {name}", send)
        finally:
            os.close(fd)
        return digest.hexdigest()

    def _read_back(self, vol: Any, name: str) -> str:
        """The sha256 of a volume's content, streamed down (holes as holes) one chunk at a time."""
        digest = Sha256()

        def receive(stream: Any) -> None:
            vol.download(stream, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
            stream.sparseRecvAll(lambda _stream, chunk, d: d.data(chunk),
                                 lambda _stream, length, d: d.hole(length), digest)

        self._with_stream(f"read back volume {name}", receive)
        return digest.hexdigest()

    def _with_stream(self, action: str, work: Callable[[Any], None]) -> None:
        """``work(stream)`` on a new stream, then ``finish``; aborted if anything fails."""
        conn = self._connection()
        with self._errors(action):
            stream = conn.newStream(0)
            try:
                work(stream)
                stream.finish()
            except BaseException:
                try:
                    stream.abort()
                except libvirt.libvirtError:
                    pass  # the stream is already dead; the original error matters
                raise

    @_storage
    def delete_volume(self, pool: str, name: str) -> None:
        check_volume_name(name)
        p = self._pool(pool)
        try:
            with self._errors(f"delete volume {name} in pool {pool}"):
                p.storageVolLookupByName(name).delete(0)
        except Gone:
            return

    @_storage
    def list_volumes(self, pool: str) -> list[VolumeInfo]:
        p = self._pool(pool)
        out: list[VolumeInfo] = []
        with self._errors(f"list volumes of pool {pool}"):
            if p.isActive():
                p.refresh(0)
            vols = p.listAllVolumes(0)
        for vol in vols:
            try:
                with self._errors(f"inspect volume in pool {pool}"):
                    out.append(self._volume_info(vol))
            except Gone:
                continue  # deleted while we were listing
        return sorted(out, key=lambda v: v.name)

    @_storage
    def read_volume_tail(self, pool: str, name: str, *, max_bytes: int) -> bytes:
        check_volume_name(name)
        check_tail_bytes(name, max_bytes)
        p = self._pool(pool)
        vol = self._volume_or_refresh(p, pool, name)
        size = self._file_size(vol, name)  # re-read now: a log grows between two looks
        offset = max(0, size - max_bytes)
        length = size - offset
        if length == 0:
            return b""
        chunks: list[bytes] = []
        held = 0

        def keep(_stream: Any, data: bytes, _opaque: None) -> int:
            nonlocal held
            # the stream ends after ``length`` bytes; the cut is a guard, not the bound
            chunk = data[: length - held]
            chunks.append(chunk)
            held += len(chunk)
            return len(data)

        def receive(stream: Any) -> None:
            vol.download(stream, offset, length, 0)
            stream.recvAll(keep, None)

        self._with_stream(f"download volume {name} from pool {pool}", receive)
        return b"".join(chunks)

    def _volume_or_refresh(self, p: Any, pool: str, name: str) -> Any:
        """The volume ``name`` of ``p``; a file the host made since the pool was last
        refreshed (libvirt does not watch a dir pool: virtlogd's new console log) is only
        found after a refresh, so a miss refreshes once and looks again."""
        try:
            with self._errors(f"volume {name} in pool {pool}"):
                return p.storageVolLookupByName(name)
        except Gone:
            pass
        with self._errors(f"refresh storage pool {pool}"):
            if p.isActive():
                p.refresh(0)
        with self._errors(f"volume {name} in pool {pool}"):
            return p.storageVolLookupByName(name)

    @_storage
    def find_volume(self, pool: str, name: str) -> VolumeInfo | None:
        check_volume_name(name)
        p = self._pool(pool)
        with self._errors(f"look up volume {name} in pool {pool}"):
            # refreshed as for list_volumes, so both see the same files (one made or
            # removed behind libvirt's back)
            if p.isActive():
                p.refresh(0)
        try:
            with self._errors(f"volume {name} in pool {pool}"):
                return self._volume_info(p.storageVolLookupByName(name))
        except Gone:
            return None

    # --- network ---------------------------------------------------------------------------
    def _network_xml(self, net: Any, *, inactive: bool) -> ET.Element:
        flags = (libvirt.VIR_NETWORK_XML_INACTIVE,) if inactive else ()
        text = self._with_fewer_flags(net.XMLDesc, (*flags, 0))
        return ET.fromstring(str(text))

    @staticmethod
    def _ipv4(root: ET.Element, network: str) -> ET.Element:
        for ip in root.findall("./ip"):
            if ip.get("family", "ipv4") == "ipv4":
                return ip
        raise HypervisorError(f"network {network} has no IPv4 address")

    def network_info(self, network: str) -> NetworkInfo:
        net = self._network(network)
        with self._errors(f"network {network}"):
            root = self._network_xml(net, inactive=False)
            active = bool(net.isActive())
        ip = self._ipv4(root, network)
        bridge = root.find("./bridge")
        prefix = ip.get("prefix")
        netmask = ip.get("netmask")
        rng = ip.find("./dhcp/range")
        return NetworkInfo(
            name=network,
            bridge=bridge.get("name", "") if bridge is not None else "",
            gateway=ip.get("address", ""),
            prefix=int(prefix) if prefix else prefix_from_netmask(netmask or "0.0.0.0"),
            dhcp_start=rng.get("start", "") if rng is not None else "",
            dhcp_end=rng.get("end", "") if rng is not None else "",
            active=active,
        )

    def list_reservations(self, network: str) -> list[Reservation]:
        net = self._network(network)
        with self._errors(f"network {network}"):
            root = self._network_xml(net, inactive=True)
        ip = self._ipv4(root, network)
        return [
            Reservation(mac=h.get("mac", ""), ip=h.get("ip", ""), name=h.get("name", ""))
            for h in ip.findall("./dhcp/host")
        ]

    def leased_addresses(self, network: str) -> dict[str, str]:
        net = self._network(network)
        if not net.isActive():
            return {}
        try:
            leases = net.DHCPLeases()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
                return {}  # drivers without a DHCP server (test:///default) lease nothing
            raise translate_error(exc, f"DHCP leases of network {network}") from exc
        return {
            str(lease["ipaddr"]): str(lease["mac"]).lower()
            for lease in leases
            if lease.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4 and lease.get("ipaddr")
        }

    def _update_hosts(self, network: str, command: int, reservation: Reservation) -> None:
        net = self._network(network)
        with self._errors(f"update DHCP hosts of network {network}"):
            flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
            if net.isActive():
                flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
            net.update(
                command, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1, host_xml(reservation), flags
            )

    def add_reservation(self, network: str, reservation: Reservation) -> None:
        if reservation_present(self.list_reservations(network), reservation, network=network):
            return
        self._update_hosts(network, libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, reservation)

    def remove_reservation(self, network: str, reservation: Reservation) -> None:
        for have in self.list_reservations(network):
            if same_mac(have.mac, reservation.mac) and have.ip == reservation.ip:
                # Delete the entry exactly as libvirt stores it (name, MAC case).
                self._update_hosts(network, libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, have)

    # --- host ------------------------------------------------------------------------------
    def host_info(self) -> HostInfo:
        # Memory from the node's memory statistics (/proc/meminfo on Linux), where the driver
        # has them: getInfo and getFreeMemory add up the NUMA nodes, which missed 14 of 24 GiB
        # on a machine whose memory was partly outside its one node. The test driver has only
        # the latter, and no caches to count: there available is free.
        conn = self._connection()
        with self._errors("host info"):
            hostname = str(conn.getHostname())
            _model, memory_mib, cpus, *_rest = conn.getInfo()
            try:
                stats = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
                total, free, available = node_memory(stats)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in _UNSUPPORTED_FLAGS:
                    raise
                total = int(memory_mib) * 1024 * 1024
                free = available = min(int(conn.getFreeMemory()), total)
            types = domain_types_of(str(conn.getCapabilities()))
        return HostInfo(hostname=hostname, memory_bytes_total=total, memory_bytes_free=free,
                        memory_bytes_available=available, cpus=int(cpus), domain_types=types)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass  # closing a dead connection: nothing left to release
