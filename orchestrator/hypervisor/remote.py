"""Remote libvirt URIs: which are remote, what keepalive they get, how a reconnect is bounded.

Owned here: ``KEEPALIVE``, ``CONNECT_TIMEOUT`` and ``OPEN_TIMEOUT`` (the settings a remote
connection gets),
``Remote`` / ``remote_of`` (a URI's transport, host and the TCP port to probe; None for a
local URI) and ``probe`` (a TCP handshake with a timeout, before libvirt connects: its own
connect has none). No libvirt and no orchestrator error here: the adapter applies them.
Called by: hypervisor.libvirt
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["CONNECT_TIMEOUT", "KEEPALIVE", "OPEN_TIMEOUT", "Remote", "probe", "remote_of"]

# Keepalive of a remote connection: (interval, count). A ping after `interval` s without
# traffic; `count` unanswered pings later the connection is closed. Nominally that is
# interval * (count + 1) after the last answer, but libvirt's keepalive timer counts whole
# seconds, so an idle connection pings every interval + 1 s: a call to a host cut off after
# an idle spell failed after up to (count + 1) * (interval + 1). Measured over qemu+tcp, the
# call failed after 8.0-11.7 s with (2, 3), 12.0-16.0 s with (3, 3), 9-13.0 s with (3, 2).
KEEPALIVE: tuple[int, int] = (2, 3)

# How long (re)connecting to a tcp or tls host waits for the TCP handshake, in seconds.
CONNECT_TIMEOUT = 5.0

# How long libvirt's open of a remote URI may take (ssh's login, the daemon's answer), in
# seconds: a daemon that accepts the connection but never answers (frozen: measured, the open
# was still waiting after 40 s), or an ssh host that drops packets, holds it up for minutes.
OPEN_TIMEOUT = 10.0

# The transports whose daemon port is probed before libvirt connects (a URI with a host and
# no transport is tls); ssh and ext run a command of their own (an ssh config's
# ConnectTimeout bounds ssh's connect).
_PROBED_PORTS = {"tcp": 16509, "tls": 16514}


@dataclass(frozen=True)
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
    probed = transport in _PROBED_PORTS and bool(host)
    return Remote(transport, host, (port or _PROBED_PORTS[transport]) if probed else None)


def probe(host: str, port: int, *, timeout: float) -> None:
    """Return once ``host:port`` completes a TCP handshake; ``OSError`` if it refuses or does
    not answer within ``timeout`` seconds (``TimeoutError``)."""
    with socket.create_connection((host, port), timeout=timeout):
        pass
