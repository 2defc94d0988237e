"""The libvirt adapter's connection: one event loop per process, keepalive on remote URIs only,
a bounded TCP handshake before a tcp/tls connect, a dead connection reopened.

No remote daemon is needed: ``open_connection`` stands in for ``libvirt.open`` with a fake
connection, the event loop is checked with a stand-in for the libvirt module, and the TCP
probe talks to a socket on 127.0.0.1. ``bench/keepalive.py`` measures the real thing against
a host that stops answering.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from orchestrator.errors import HypervisorUnavailable
from orchestrator.hypervisor import libvirt as adapter
from orchestrator.hypervisor.base import UNAVAILABLE_HINT
from orchestrator.hypervisor.eventloop import EventLoop
from orchestrator.hypervisor.libvirt import (
    EVENT_LOOP,
    KEEPALIVE,
    LibvirtHypervisor,
    Remote,
    remote_of,
)


def libvirt_error(code: int, domain: int, message: str) -> libvirt.libvirtError:
    """A libvirtError as libvirt raises it (code, domain, message), without a connection."""
    error = libvirt.libvirtError(message)
    error.err = (code, domain, message, 2, None, None, None, 0, 0)
    return error


KEEPALIVE_TIMEOUT = (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_RPC,
                     "internal error: connection closed due to keepalive timeout")


class FakeConnection:
    """What the adapter uses of a virConnect here: alive or not, keepalive, close, one list."""

    def __init__(self, keepalive_error: libvirt.libvirtError | None = None) -> None:
        self.alive = True
        self.keepalive: list[tuple[int, int]] = []
        self.closed = False
        self.keepalive_error = keepalive_error
        self.fail_list: libvirt.libvirtError | None = None

    def isAlive(self) -> int:
        return int(self.alive)

    def setKeepAlive(self, interval: int, count: int) -> int:
        if self.keepalive_error is not None:
            raise self.keepalive_error
        self.keepalive.append((interval, count))
        return 0

    def close(self) -> int:
        self.closed = True
        return 0

    def listAllDomains(self, flags: int) -> list[Any]:
        if self.fail_list is not None:
            self.alive = False  # libvirt closed the connection when the keepalive ran out
            raise self.fail_list
        return []


class Opener:
    """Stands in for ``libvirt.open``: records each URI and whether the loop ran first."""

    def __init__(self, **conn_kwargs: Any) -> None:
        self.opened: list[str] = []
        self.loop_registered_first: list[bool] = []
        self.connections: list[FakeConnection] = []
        self._kwargs = conn_kwargs

    def __call__(self, uri: str) -> FakeConnection:
        self.loop_registered_first.append(EVENT_LOOP.registered)
        self.opened.append(uri)
        conn = FakeConnection(**self._kwargs)
        self.connections.append(conn)
        return conn


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that accepts connections (the probe's handshake succeeds)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (the handshake is refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- which URIs are remote ----------------------------------------------------------------
@pytest.mark.parametrize("uri", ["qemu:///system", "qemu:///session", "qemu+unix:///system",
                                 "qemu+unix:///system?socket=/run/x/libvirt-sock",
                                 "test:///default", "test:///tmp/node.xml"])
def test_local_uris_are_not_remote(uri: str) -> None:
    assert remote_of(uri) is None


@pytest.mark.parametrize(("uri", "remote"), [
    ("qemu+tcp://10.250.0.1/system", Remote("tcp", "10.250.0.1", 16509)),
    ("qemu+tcp://host1:16600/system", Remote("tcp", "host1", 16600)),
    ("qemu+tls://host1.example/system", Remote("tls", "host1.example", 16514)),
    ("qemu://host1/system", Remote("tls", "host1", 16514)),  # libvirt's default transport
    ("qemu+tcp://[fd00::2]/system", Remote("tcp", "fd00::2", 16509)),
    ("qemu+ssh://root@host1/system", Remote("ssh", "host1", None)),
    ("qemu+ssh://root@host1:2222/system?keyfile=/root/.ssh/id", Remote("ssh", "host1", None)),
    ("qemu+libssh2://host1/system", Remote("libssh2", "host1", None)),
    ("qemu+ext:///system?command=/bin/connect", Remote("ext", "", None)),
])
def test_remote_uris_and_their_probe_port(uri: str, remote: Remote) -> None:
    assert remote_of(uri) == remote


# --- the event loop: registered once per process ------------------------------------------
class FakeLibvirt:
    """Stands in for the libvirt module's event functions; the loop blocks until released."""

    libvirtError = libvirt.libvirtError

    def __init__(self, failures: int = 0) -> None:
        self.registrations = 0
        self.runs = 0
        self.failures = failures
        self.release = threading.Event()
        self.ran_twice = threading.Event()

    def virEventRegisterDefaultImpl(self) -> int:
        self.registrations += 1
        return 0

    def virEventRunDefaultImpl(self) -> int:
        self.runs += 1
        if self.runs >= 2:
            self.ran_twice.set()
        if self.runs <= self.failures:
            raise libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_EVENT, "poll")
        self.release.wait()
        return 0


def test_event_loop_registers_once_and_runs_one_daemon_thread() -> None:
    lib = FakeLibvirt()
    loop = EventLoop(lib, thread_name="test-event-loop")
    assert not loop.registered
    start = threading.Barrier(16)

    def racer() -> None:
        start.wait()
        loop.ensure()

    racers = [threading.Thread(target=racer) for _ in range(16)]
    for t in racers:
        t.start()
    for t in racers:
        t.join()
    loop.ensure()
    try:
        assert lib.registrations == 1
        assert loop.registered and loop.thread is not None
        assert loop.thread.daemon and loop.thread.is_alive()
        assert [t.name for t in threading.enumerate()].count("test-event-loop") == 1
    finally:
        lib.release.set()


def test_event_loop_survives_a_failing_iteration() -> None:
    lib = FakeLibvirt(failures=1)
    loop = EventLoop(lib, thread_name="test-event-loop-failing")
    loop.ensure()
    try:
        assert lib.ran_twice.wait(5), "the loop stopped after a failed iteration"
        assert loop.errors == 1
    finally:
        lib.release.set()


@pytest.mark.libvirt
def test_the_adapter_registers_the_process_loop_before_connecting() -> None:
    hv = LibvirtHypervisor("test:///default")
    try:
        hv.list_domains()
        assert EVENT_LOOP.registered
        assert EVENT_LOOP.thread is not None and EVENT_LOOP.thread.is_alive()
        names = [t.name for t in threading.enumerate()]
        assert names.count("libvirt-event-loop") == 1
        other = LibvirtHypervisor("test:///default")
        other.list_domains()
        other.close()
        assert [t.name for t in threading.enumerate()].count("libvirt-event-loop") == 1
    finally:
        hv.close()


@pytest.mark.libvirt
def test_the_test_driver_refuses_keepalive() -> None:
    """Why local URIs get none: libvirt's test driver has no keepalive at all."""
    hv = LibvirtHypervisor("test:///default")
    try:
        conn: Any = hv._connection()
        with pytest.raises(libvirt.libvirtError) as raised:
            conn.setKeepAlive(*KEEPALIVE)
        assert raised.value.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT
    finally:
        hv.close()


# --- keepalive: remote URIs only ----------------------------------------------------------
def test_keepalive_budget_is_within_fifteen_seconds() -> None:
    """A silent host must cost at most ~15 s: libvirt's whole-second keepalive timer makes an
    idle connection's pings interval + 1 s apart, so the worst case is (count+1)*(interval+1)."""
    interval, count = KEEPALIVE
    assert interval >= 1 and count >= 1
    assert (count + 1) * (interval + 1) <= 15
    assert adapter.CONNECT_TIMEOUT <= 15


@pytest.mark.parametrize("uri", ["qemu:///system", "qemu+unix:///system", "test:///default"])
def test_local_connections_get_no_keepalive(uri: str) -> None:
    opener = Opener()
    hv = LibvirtHypervisor(uri, open_connection=opener)
    hv.list_domains()
    assert opener.opened == [uri] and opener.loop_registered_first == [True]
    assert opener.connections[0].keepalive == []


@pytest.mark.parametrize("uri", ["qemu+ssh://root@host1/system", "qemu+libssh://host1/system",
                                 "qemu+ext:///system?command=/bin/connect"])
def test_remote_connections_get_keepalive(uri: str) -> None:
    opener = Opener()
    hv = LibvirtHypervisor(uri, open_connection=opener)
    hv.list_domains()
    hv.list_domains()  # the same connection: keepalive set once
    assert opener.opened == [uri] and opener.loop_registered_first == [True]
    assert opener.connections[0].keepalive == [KEEPALIVE]


def test_tcp_connection_is_probed_then_gets_keepalive(listener: int) -> None:
    uri = f"qemu+tcp://127.0.0.1:{listener}/system"
    opener = Opener()
    hv = LibvirtHypervisor(uri, open_connection=opener, keepalive=(2, 3))
    hv.list_domains()
    assert opener.opened == [uri]
    assert opener.connections[0].keepalive == [(2, 3)]


def test_keepalive_none_sets_none(listener: int) -> None:
    opener = Opener()
    LibvirtHypervisor(f"qemu+tcp://127.0.0.1:{listener}/system", open_connection=opener,
                      keepalive=None).list_domains()
    assert opener.connections[0].keepalive == []


def test_a_tcp_host_that_refuses_is_unavailable_before_libvirt_connects(closed_port: int) -> None:
    uri = f"qemu+tcp://127.0.0.1:{closed_port}/system"
    opener = Opener()
    with pytest.raises(HypervisorUnavailable) as info:
        LibvirtHypervisor(uri, open_connection=opener).list_domains()
    assert f"127.0.0.1:{closed_port}" in info.value.message and uri in info.value.message
    assert info.value.hint == UNAVAILABLE_HINT
    assert opener.opened == []


def test_a_driver_without_keepalive_is_used_without() -> None:
    opener = Opener(keepalive_error=libvirt_error(libvirt.VIR_ERR_NO_SUPPORT,
                                                  libvirt.VIR_FROM_NONE, "not supported"))
    hv = LibvirtHypervisor("qemu+ssh://host1/system", open_connection=opener)
    assert hv.list_domains() == []
    assert not opener.connections[0].closed


def test_a_refused_keepalive_closes_the_connection_and_is_unavailable() -> None:
    opener = Opener(keepalive_error=libvirt_error(
        libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_RPC,
        "the caller doesn't support keepalive protocol; perhaps it's missing event loop"))
    hv = LibvirtHypervisor("qemu+ssh://host1/system", open_connection=opener)
    with pytest.raises(HypervisorUnavailable, match="keepalive"):
        hv.list_domains()
    assert opener.connections[0].closed


def test_a_call_cut_by_the_keepalive_is_unavailable_and_the_next_call_reopens() -> None:
    opener = Opener()
    hv = LibvirtHypervisor("qemu+ssh://host1/system", open_connection=opener)
    hv.list_domains()
    first = opener.connections[0]
    first.fail_list = libvirt_error(*KEEPALIVE_TIMEOUT)
    with pytest.raises(HypervisorUnavailable, match="keepalive timeout") as info:
        hv.list_domains()
    assert info.value.exit_code == 4 and info.value.temporary
    assert hv.list_domains() == []  # reopened
    assert len(opener.connections) == 2 and first.closed
    assert opener.connections[1].keepalive == [KEEPALIVE]
