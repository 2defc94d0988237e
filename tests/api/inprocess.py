"""Two ways for ``orchestrator.client.Client`` to reach the app of `orch serve` in a test:
``AppTransport`` (an httpx transport calling the ASGI app in process, no socket) and
``served`` (uvicorn on 127.0.0.1 on a free port, in a thread, for code that only takes a
URL: the pytest plugin run by pytester).

Used by tests/api/test_client.py and tests/api/test_testing_plugin.py.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from anyio.from_thread import BlockingPortal, start_blocking_portal

START_SECONDS = 10.0  # uvicorn starts in well under a second; this is the deadline only


class AppTransport(httpx.BaseTransport):
    """A synchronous httpx transport into an ASGI app: httpx's own ``ASGITransport`` (which
    is asynchronous) run on one event loop in a thread of its own (``portal``), as a server
    runs the app. Only public httpx and anyio API: no test client's internals."""

    def __init__(self, app: Any, portal: BlockingPortal) -> None:
        # app exceptions become the 500 answers the app's handlers make, as in a server
        self._asgi = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        self._portal = portal

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def send() -> httpx.Response:
            answer = await self._asgi.handle_async_request(request)
            body = await answer.aread()
            return httpx.Response(answer.status_code, headers=answer.headers, content=body)

        return self._portal.call(send)


@contextlib.contextmanager
def app_transport(app: Any) -> Iterator[AppTransport]:
    with start_blocking_portal() as portal:
        yield AppTransport(app, portal)


@contextlib.contextmanager
def served(app: Any, *, tls: tuple[Path, Path] | None = None) -> Iterator[str]:
    """``app`` served by uvicorn on 127.0.0.1 (a free port) in a thread, over HTTPS with
    ``tls`` (certificate, key); yields its URL. The socket is bound and listening before
    uvicorn runs, so the URL answers at once."""
    # IPPROTO_TCP said, as uvicorn's own bind says it: asyncio sets TCP_NODELAY only on the
    # connections of such a socket, and without it each answer waits 40 ms for an ACK
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
        ssl_certfile=str(tls[0]) if tls else None, ssl_keyfile=str(tls[1]) if tls else None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="uvicorn-test", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_SECONDS
        while not server.started:  # uvicorn sets it once serving; nothing to wait on instead
            assert thread.is_alive(), "uvicorn stopped while starting"
            assert time.monotonic() < deadline, "uvicorn did not start"
            thread.join(0.01)
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(START_SECONDS)
        sock.close()
