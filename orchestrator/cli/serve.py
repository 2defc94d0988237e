"""`orch serve`: the HTTP API, the web portal and the controller loop in one process.

Owned here: the command, its flags, and the ``Opener`` it hands the server: each API call
and each controller pass gets collaborators of its own, wired as ``AppContext.env`` wires a
command's (its own store connection and libvirt connections, closed when the call ends).

Called by: cli (importing it registers the command)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import click

from orchestrator.api.operations import Opener
from orchestrator.cli.app import AppContext, cli, pass_app
from orchestrator.errors import InvalidInput
from orchestrator.usecases.session import Env, Progress


@cli.command("serve")
@click.option("--listen", default="127.0.0.1:8717", show_default=True,
              help="HOST:PORT to listen on; anything but loopback needs --tls-cert/--tls-key.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The API's bearer token; made (0600) on first start [STATE_DIR/api-token].")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PEM certificate: serve HTTPS.")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PEM private key of --tls-cert.")
@click.option("--interval", type=click.FloatRange(min=1, max=3600), default=15,
              show_default=True, help="Seconds between the controller's passes.")
@click.option("--no-controller", is_flag=True,
              help="Serve the API only; run no controller loop in this process.")
@click.option("--stop-timeout", type=click.FloatRange(min=0, max=3600), default=30,
              show_default=True,
              help="On SIGTERM: seconds running operations get to end before the process "
                   "exits (what still runs is resumed by the next controller pass).")
@pass_app
def serve_command(app: AppContext, listen: str, token_file: Path | None,
                  tls_cert: Path | None, tls_key: Path | None, interval: float,
                  no_controller: bool, stop_timeout: float) -> None:
    """Run the HTTP API (/v1/...), the web portal (/) and the controller loop (resume,
    Automatic and automatic OS upgrades, repairs) in one process, on the same use cases
    and locks as the CLI. Prints the portal's link (with the token) on start; stops on
    SIGTERM or Ctrl-C."""
    from orchestrator.api import auth
    from orchestrator.api.serve import ServeConfig, serve

    host, port = auth.parse_listen(listen)
    if (tls_cert is None) != (tls_key is None):
        raise InvalidInput("--tls-cert and --tls-key go together")
    for path in (tls_cert, tls_key):
        if path is not None and not path.is_file():
            raise InvalidInput(f"TLS file {path} not found or not a regular file")
    auth.check_listen(host, tls=tls_cert is not None)
    app.ensure_state_dir()
    token_path = token_file or app.state_dir / "api-token"
    token = auth.load_or_create_token(token_path)
    config = ServeConfig(host=host, port=port, token=token, token_file=token_path,
                         interval=interval, stop_timeout=stop_timeout, tls_cert=tls_cert,
                         tls_key=tls_key, controller=not no_controller)
    serve(config, opener_of(app), after_pass=app.write_metrics)


def opener_of(app: AppContext) -> Opener:
    """Collaborators per call, as ``AppContext.env`` wires them for one command."""

    @contextlib.contextmanager
    def opened(progress: Progress) -> Iterator[Env]:
        env = dataclasses.replace(app, _store=None, progress=progress).env()
        try:
            yield env
        finally:
            env.engine.close()

    return opened

