"""`orch serve`: the HTTP API and the controller loop in one process, and its stop.

Owned here: ``Server`` (uvicorn serving ``api.app`` on the main thread, the controller's
passes on a thread of their own, each pass as ``orch controller run`` makes it), the stop
on SIGTERM or SIGINT (no new requests; the controller ends after its current pass; running
operations get ``stop_timeout`` seconds, and what still runs then is left to the journal,
which the next controller pass resumes, exactly as after a killed ``orch``), and the
portal link printed on start.

Called by: cli.serve
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import uvicorn

from orchestrator import logs
from orchestrator.api.app import Backend, ControllerState, create_app
from orchestrator.api.operations import Opener, Operations, call
from orchestrator.clock import iso
from orchestrator.errors import OrchError
from orchestrator.usecases import controller as controller_mod


@dataclass(frozen=True)
class ServeConfig:
    host: str
    port: int
    token: str
    token_file: Path
    interval: float = 15.0
    stop_timeout: float = 30.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    controller: bool = True


class ControllerLoop:
    """The controller's passes on a thread of their own until ``stop``."""

    def __init__(self, opener: Opener, state: ControllerState, *, interval: float,
                 after_pass: Callable[[], None] = lambda: None) -> None:
        self._opener = opener
        self._after_pass = after_pass
        self._state = state
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="controller", daemon=True)

    def start(self) -> None:
        self._state.running = True
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    report = call(self._opener, controller_mod.run_pass)
                    problems = list(report.problems)
                except OrchError as exc:
                    problems = [exc.one_line()]
                for line in problems:
                    logs.warning(f"controller: problem: {line}")
                self._state.passes += 1
                self._state.last_pass_at = iso(datetime.now(UTC))
                self._state.last_problems = problems
                self._after_pass()
                self._stop.wait(self._interval)
        finally:
            self._state.running = False

    def stop(self, timeout: float) -> bool:
        """Ask the loop to end after its pass; whether it ended within ``timeout``."""
        self._stop.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()


def _server(config: uvicorn.Config) -> uvicorn.Server:
    class Server(uvicorn.Server):
        """uvicorn's server, whose SIGTERM/SIGINT only ask it to stop: uvicorn's own raises
        the signal again once it has stopped, which would kill the process before the
        controller and the running operations are given their time."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            before = {sig: signal.signal(sig, self.handle_exit)
                      for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in before.items():
                    signal.signal(sig, handler)

    return Server(config)


def base_url(config: ServeConfig) -> str:
    scheme = "https" if config.tls_cert else "http"
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"{scheme}://{host}:{config.port}"


def serve(config: ServeConfig, opener: Opener, *,
          after_pass: Callable[[], None] = lambda: None) -> None:
    """Serve until SIGTERM or SIGINT, then stop as the module docstring says."""
    operations = Operations(opener)
    backend = Backend(opener=opener, operations=operations, token=config.token)
    app = create_app(backend)
    loop = ControllerLoop(opener, backend.controller, interval=config.interval,
                          after_pass=after_pass)
    server = _server(uvicorn.Config(
        app, host=config.host, port=config.port, log_level="warning", access_log=False,
        ssl_certfile=str(config.tls_cert) if config.tls_cert else None,
        ssl_keyfile=str(config.tls_key) if config.tls_key else None,
        timeout_graceful_shutdown=5, server_header=False))
    if config.controller:
        loop.start()
    logs.progress(f"orch serve: API on {base_url(config)}/v1, token in {config.token_file}")
    logs.progress(f"orch serve: portal {base_url(config)}/#token={config.token}")
    try:
        asyncio.run(server.serve())
    finally:
        logs.progress("orch serve: stopping")
        if config.controller and not loop.stop(config.stop_timeout):
            logs.warning("orch serve: the controller's pass did not end in time; its work "
                         "stays in the journal and is resumed by the next controller pass")
        left = operations.join(config.stop_timeout)
        for op in left:
            logs.warning(f"orch serve: operation {op.id} ({op.kind} {op.scale_set}) still "
                         "running; left to the journal: the next controller pass resumes it")
        logs.progress("orch serve: stopped")
