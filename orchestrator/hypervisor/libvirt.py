"""The libvirt adapter: the ``Hypervisor`` protocol on a real (or ``test:///``) libvirt connection.

Owned here: ``LibvirtHypervisor``, the one table mapping libvirt domain states to
``PowerState``, and the one function translating ``libvirt.libvirtError`` into
``orchestrator.errors``. This is the ONLY module of the project that imports ``libvirt``.
Called by: cli.app (which makes the adapter; the use cases and the engine reach it only through
the ``Hypervisor`` protocol of ``hypervisor.base``)

Every verb is synchronous and idempotent where the protocol says so ("already off", "already
missing" are not errors). Domain XML comes from ``domainxml.Domain.to_xml``; volume and
DHCP-host XML is built here with ElementTree, never by string formatting.

Remote hosts (``qemu+tcp://``, ``qemu+tls://``, ``qemu+ssh://``, ...; see ``remote_of``): before
the process's first connection libvirt's default event loop is registered and run by a daemon
thread (``EVENT_LOOP``), and every remote connection gets ``setKeepAlive(*KEEPALIVE)``: a host
that silently drops packets closes the connection within 8-12 s, and the call in flight
raises ``HypervisorUnavailable`` instead of hanging (without keepalive it still hung after
45 s). The next verb reopens the connection; for tcp and tls its TCP
handshake is tried first with a ``CONNECT_TIMEOUT`` (libvirt's own connect has none: about
two minutes of SYN retries to a blackholed host). Local URIs (``qemu:///system``,
``qemu+unix://``, ``test:///``) get no keepalive: a unix socket fails at once when its daemon
dies, and the test driver refuses keepalive altogether.
"""

from __future__ import annotations

import dataclasses
import functools
import socket
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

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
    NetworkInfo,
    PoolInfo,
    PowerState,
    Reservation,
    VolumeInfo,
    check_backing_format,
    check_upload_format,
    check_volume_name,
    reservation_present,
    same_mac,
)
from orchestrator.hypervisor.domainxml import Domain, Ownership, parse_owner
from orchestrator.hypervisor.eventloop import EventLoop

__all__ = [
    "CONNECT_TIMEOUT",
    "EVENT_LOOP",
    "KEEPALIVE",
    "POWER_STATES",
    "LibvirtHypervisor",
    "Remote",
    "remote_of",
    "translate_error",
]

# libvirt prints every error to stderr by default; we translate them instead.
libvirt.registerErrorHandler(lambda *_args: None, None)

# The process's one libvirt event loop (keepalive needs it); started before the first open.
EVENT_LOOP = EventLoop(libvirt)

# Keepalive of a remote connection: (interval, count). A ping after `interval` s without
# traffic; `count` unanswered pings later the connection is closed. Nominally that is
# interval * (count + 1) after the last answer, but libvirt's keepalive timer counts whole
# seconds, so an idle connection pings every interval + 1 s: a call to a host cut off after
# an idle spell failed after up to (count + 1) * (interval + 1). Measured over qemu+tcp, the
# call failed after 8.0-11.7 s with (2, 3), 12.0-16.0 s with (3, 3), 9-13.0 s with (3, 2).
KEEPALIVE: tuple[int, int] = (2, 3)

# How long (re)connecting to a tcp or tls host waits for the TCP handshake, in seconds.
CONNECT_TIMEOUT = 5.0

# libvirt's remote transports; a URI with a host and no transport is tls.
_REMOTE_TRANSPORTS = frozenset({"tcp", "tls", "ssh", "libssh", "libssh2", "ext"})
# The transports whose daemon port this adapter probes before libvirt connects; ssh and ext
# run a command of their own (an ssh config's ConnectTimeout bounds ssh's connect).
_PROBED_PORTS = {"tcp": 16509, "tls": 16514}


@dataclasses.dataclass(frozen=True)
class Remote:
    """How a URI reaches a daemon on another host."""

    transport: str  # "tcp" | "tls" | "ssh" | "libssh" | "libssh2" | "ext" | another
    host: str
    probe_port: int | None  # the TCP port tried before connecting (tcp, tls), else None


def remote_of(uri: str) -> Remote | None:
    """The remote side of ``uri``, or None for a local daemon or driver (``qemu:///system``,
    ``qemu+unix:///system``, ``test:///default``): those need no keepalive."""
    parts = urlsplit(uri)
    _driver, _, transport = parts.scheme.partition("+")
    host = parts.hostname or ""
    if transport == "unix" or (not transport and not host):
        return None
    transport = transport or "tls"
    try:
        port = parts.port
    except ValueError:
        port = None  # not a port: libvirt's open says what is wrong with it
    probe = (port or _PROBED_PORTS[transport]) if transport in _PROBED_PORTS and host else None
    return Remote(transport, host, probe)

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


def _xml(root: ET.Element) -> str:
    return ET.tostring(root, encoding="unicode")


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _volume_xml(
    name: str, *, capacity_bytes: int, fmt: str, backing: tuple[str, str] | None = None
) -> str:
    vol = ET.Element("volume")
    _sub(vol, "name", name)
    _sub(vol, "capacity", str(capacity_bytes), unit="bytes")
    target = _sub(vol, "target")
    _sub(target, "format", type=fmt)
    _sub(_sub(target, "permissions"), "mode", "0644")
    if backing is not None:
        store = _sub(vol, "backingStore")
        _sub(store, "path", backing[0])
        _sub(store, "format", type=backing[1])  # pinned: never let qemu probe the format
    return _xml(vol)


def _host_xml(reservation: Reservation) -> str:
    attrs = {"mac": reservation.mac, "ip": reservation.ip}
    if reservation.name:
        attrs["name"] = reservation.name
    return _xml(ET.Element("host", attrs))



def _prefix_from_netmask(netmask: str) -> int:
    bits = "".join(f"{int(part):08b}" for part in netmask.split("."))
    return bits.count("1")


def _storage(method: Callable[..., Any]) -> Callable[..., Any]:
    """Storage calls one at a time: libvirt refuses a pool refresh (and other pool work)
    while a volume job of another thread runs ("pool has asynchronous jobs running")."""

    @functools.wraps(method)
    def locked(self: LibvirtHypervisor, *args: Any, **kwargs: Any) -> Any:
        with self._storage_lock:
            return method(self, *args, **kwargs)

    return locked


class LibvirtHypervisor:
    """``Hypervisor`` on one libvirt connection, opened on first use and reopened if it died."""

    def __init__(
        self,
        uri: str,
        *,
        keepalive: tuple[int, int] | None = KEEPALIVE,
        connect_timeout: float = CONNECT_TIMEOUT,
        open_connection: Callable[[str], Any] | None = None,
    ) -> None:
        """``keepalive``: (interval, count) for remote connections, None for none (the bench
        compares); ``open_connection``: ``libvirt.open`` unless a test stands in for it."""
        self._uri = uri
        self._remote = remote_of(uri)
        self._keepalive = keepalive
        self._connect_timeout = connect_timeout
        self._open = open_connection
        self._conn: Any = None
        self._storage_lock = threading.RLock()

    @property
    def uri(self) -> str:
        return self._uri

    # --- connection and error plumbing -------------------------------------------------------
    def _connection(self) -> Any:
        if self._conn is not None and self._alive(self._conn):
            return self._conn
        if self._conn is not None:
            self.close()  # dead (keepalive timeout, daemon gone): release it, open anew
        EVENT_LOOP.ensure()  # before any connection: keepalive needs the loop
        remote = self._remote
        if remote is not None and remote.probe_port is not None:
            self._probe(remote.host, remote.probe_port)
        open_connection = self._open or libvirt.open
        try:
            conn = open_connection(self._uri)
        except libvirt.libvirtError as exc:
            raise translate_error(exc, f"connect to {self._uri}", connecting=True) from exc
        if remote is not None and self._keepalive is not None:
            self._set_keepalive(conn, *self._keepalive)
        self._conn = conn
        return conn

    def _probe(self, host: str, port: int) -> None:
        """HypervisorUnavailable unless ``host:port`` completes a TCP handshake in time."""
        try:
            with socket.create_connection((host, port), timeout=self._connect_timeout):
                pass
        except OSError as exc:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                reason = f"no answer within {self._connect_timeout:g}s"
            raise HypervisorUnavailable(f"connect to {self._uri}: {host}:{port}: {reason}",
                                        hint=UNAVAILABLE_HINT) from exc

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
                    owner = parse_owner(str(dom.XMLDesc(0)))
            except Gone:
                continue  # undefined while we were listing
            out.append(DomainInfo(name, self._power_state(int(state), int(reason)), owner))
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
        xml = _volume_xml(
            name, capacity_bytes=capacity_bytes, fmt="qcow2", backing=(backing_path, backing_format)
        )
        return self._create(pool, name, xml)

    @_storage
    def create_volume(self, pool: str, *, name: str, capacity_bytes: int) -> VolumeInfo:
        check_volume_name(name)
        return self._create(pool, name, _volume_xml(name, capacity_bytes=capacity_bytes, fmt="qcow2"))

    @_storage
    def upload_volume(self, pool: str, *, name: str, data: bytes, fmt: str = "raw") -> VolumeInfo:
        check_volume_name(name)
        check_upload_format(name, fmt)
        self.delete_volume(pool, name)
        info = self._create(pool, name, _volume_xml(name, capacity_bytes=len(data), fmt=fmt))
        try:
            self._send(pool, name, data)
        except OrchError:
            # A volume without its content must not look like a finished seed.
            self.delete_volume(pool, name)
            raise
        return info

    def _send(self, pool: str, name: str, data: bytes) -> None:
        p = self._pool(pool)
        conn = self._connection()
        with self._errors(f"upload volume {name} to pool {pool}"):
            vol = p.storageVolLookupByName(name)
            stream = conn.newStream(0)
            try:
                vol.upload(stream, 0, len(data), 0)
                view = memoryview(data)
                while view:
                    sent = stream.send(bytes(view[:_UPLOAD_CHUNK]))
                    if sent < 0:
                        raise HypervisorError(f"upload volume {name}: stream refused data")
                    view = view[sent:]
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
            prefix=int(prefix) if prefix else _prefix_from_netmask(netmask or "0.0.0.0"),
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
                command, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1, _host_xml(reservation), flags
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

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass  # closing a dead connection: nothing left to release
