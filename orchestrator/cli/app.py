"""The ``orch`` command group, its global options and the application context.

Owned here: global options and their environment variables (``--state-dir``,
``--libvirt-uri``, ``--domain-type``, ``-o``, ``--no-wait``, ``-v``, ``--metrics-file``,
``--log-format``), how a command reaches the use cases (``AppContext``), table columns, writing
the metrics file once a command has ended (``AppContext.write_metrics``), the wiring of the
use cases' collaborators (``AppContext.env``) and the one event loop of a command
(``AppContext.run``), and the mapping of errors to one line on stderr (then the error's
details, indented) plus an exit code (0 ok, 1 failed, 2 bad input, 3 conflict, 4
environment). ``main`` is the console script.

Called by: cli, cli.controller, cli.hosts, cli.images, cli.labcmds, cli.serve, cli.vmss,
testing
"""

from __future__ import annotations

import asyncio
import os
import sys
import traceback
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from orchestrator import lab as lab_mod
from orchestrator import logs, metrics
from orchestrator.clock import RealClock
from orchestrator.errors import EnvironmentProblem, OrchError
from orchestrator.images import Registry
from orchestrator.output import FORMATS, ProgressPrinter, render
from orchestrator.store import Store

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

INSTANCE_COLUMNS = [
    ("instanceId", "ID"), ("name", "NAME"), ("powerState", "POWER"),
    ("healthState", "HEALTH"), ("latestModelApplied", "LATEST MODEL"), ("image", "IMAGE"),
    ("modelGeneration", "GEN"), ("ipAddress", "IP"),
]
SET_COLUMNS = [
    ("name", "NAME"), ("capacity", "CAPACITY"), ("generation", "GENERATION"),
    ("instanceCount", "INSTANCES"), ("latestModelInstances", "ON LATEST"),
]
OPERATION_COLUMNS = [("id", "ID"), ("kind", "OPERATION"), ("status", "STATUS"), ("pid", "PID"),
                     ("startedAt", "STARTED"), ("endedAt", "ENDED"), ("error", "ERROR")]
IMAGE_COLUMNS = [("ref", "IMAGE"), ("sha256", "SHA256"), ("sizeMiB", "SIZE MiB"),
                 ("kernelBoot", "KERNEL BOOT"), ("createdAt", "CREATED")]


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/orchestrator")
    return Path.home() / ".local" / "state" / "orchestrator"


@dataclass
class AppContext:
    state_dir: Path
    libvirt_uri: str
    domain_type: str
    output: str
    wait: bool
    verbose: int
    metrics_file: Path | None = None
    progress: Callable[[str], None] = field(default_factory=ProgressPrinter)
    _store: Store | None = None

    def ensure_state_dir(self) -> Path:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            # libvirt's qemu user must traverse it to reach images and the lab's pool
            if self.state_dir.stat().st_uid == os.geteuid():
                os.chmod(self.state_dir, 0o711)
        except OSError as exc:
            raise EnvironmentProblem(f"cannot create state dir {self.state_dir}: {exc.strerror}",
                                     hint="choose another with --state-dir") from exc
        return self.state_dir

    @property
    def store(self) -> Store:
        if self._store is None:
            self.ensure_state_dir()
            self._store = Store(self.state_dir / "orchestrator.db")
        return self._store

    @property
    def registry(self) -> Registry:
        return Registry(self.store, self.state_dir)

    def resolved_domain_type(self) -> str:
        return lab_mod.detect_domain_type() if self.domain_type == "auto" else self.domain_type

    def env(self) -> Any:
        """The collaborators of the use cases, wired to the real libvirt and SSH."""
        # imported here so that `orch image`/`orch lab` work without reaching libvirt
        from orchestrator.engine.context import Engine, Settings
        from orchestrator.engine.health import SshProber
        from orchestrator.engine.hosts import Fleet
        from orchestrator.hypervisor.base import Hypervisor
        from orchestrator.hypervisor.libvirt import LibvirtHypervisor
        from orchestrator.hypervisor.retry import Retrying
        from orchestrator.usecases.session import Env

        clock = RealClock()

        def connect(uri: str) -> Hypervisor:
            # a restarted local libvirtd is ridden out for a minute; a remote host that stops
            # answering must not hold anything up for longer than its detection takes
            local = uri.startswith(("qemu:///", "test:///"))
            return Retrying(LibvirtHypervisor(uri), clock=clock, log=self.progress,
                            give_up_after=60.0 if local else 10.0)

        hv = connect(self.libvirt_uri)
        pool = os.environ.get("ORCH_POOL", "default")
        engine = Engine(
            hv=hv,
            store=self.store,
            registry=self.registry,
            clock=clock,
            settings=Settings(state_dir=self.state_dir, pool=pool,
                              domain_type=self.resolved_domain_type()),
            log=self.progress,
            fleet=Fleet(self.store, local=hv, local_uri=self.libvirt_uri, local_pool=pool,
                        connect=connect),
        )
        return Env(engine=engine, prober=SshProber(clock=clock), progress=self.progress)

    @staticmethod
    def run(work: Coroutine[Any, Any, T]) -> T:
        """The one place a command's async work is run (one event loop per command)."""
        return asyncio.run(work)

    def show(self, data: Any, *, columns: Sequence[tuple[str, str]] | None = None) -> None:
        render(data, self.output, columns=columns)

    def write_metrics(self) -> None:
        """Write the metrics file, if one is configured, from the store as it is now. Called
        when a command ends (whatever its exit code) and after each controller pass. A state
        dir without a database is not created for it (the file then lists no sets); a
        failure is one warning line on stderr and never changes the command's exit code."""
        if self.metrics_file is None:
            return
        try:
            store = self._store
            if store is None and (self.state_dir / "orchestrator.db").is_file():
                store = self.store
            metrics.write(store, self.metrics_file)
        except Exception as exc:  # noqa: BLE001 - metrics must not fail the command
            text = exc.one_line() if isinstance(exc, OrchError) else f"{type(exc).__name__}: {exc}"
            logs.warning(f"metrics file not written: {text}")


pass_app = click.make_pass_decorator(AppContext)


def _configure_logs(fmt: str) -> str:
    """--log-format is eager: configured before other options, so that even their usage
    errors come out in the chosen format."""
    logs.configure(fmt)
    return fmt


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              envvar="ORCH_STATE_DIR", default=None,
              help="Where state, images and keys live [env ORCH_STATE_DIR; default "
                   "/var/lib/orchestrator as root, else ~/.local/state/orchestrator].")
@click.option("--libvirt-uri", envvar="ORCH_LIBVIRT_URI", default="qemu:///system",
              show_default=True, help="libvirt connection URI [env ORCH_LIBVIRT_URI].")
@click.option("--domain-type", type=click.Choice(["auto", "kvm", "qemu"]), envvar="ORCH_DOMAIN_TYPE",
              default="auto", show_default=True,
              help="kvm, or qemu (TCG); auto picks kvm only when kvm_intel/kvm_amd is loaded.")
@click.option("-o", "--output", type=click.Choice(FORMATS), default="table", show_default=True,
              help="Output format.")
@click.option("--no-wait", is_flag=True, help="Return once the operation is recorded and started.")
@click.option("-v", "--verbose", count=True, help="More detail (tracebacks on internal errors).")
@click.option("--metrics-file", type=click.Path(path_type=Path), envvar="ORCH_METRICS_FILE",
              default=None,
              help="Write Prometheus metrics here after every command and controller pass, "
                   "atomically (node_exporter textfile collector: a *.prom file in its "
                   "directory) [env ORCH_METRICS_FILE]. Its directory must exist.")
@click.option("--log-format", type=click.Choice(logs.LOG_FORMATS), envvar="ORCH_LOG_FORMAT",
              default="text", show_default=True, is_eager=True,
              callback=lambda ctx, param, value: _configure_logs(value),
              help="Progress and log lines on stderr: text, or one JSON object per line "
                   "[env ORCH_LOG_FORMAT].")
@click.pass_context
def cli(ctx: click.Context, state_dir: Path | None, libvirt_uri: str, domain_type: str,
        output: str, no_wait: bool, verbose: int, metrics_file: Path | None,
        log_format: str) -> None:
    """orchestrator: scale sets of QEMU/KVM virtual machines on libvirt, upgraded the way
    Azure Virtual Machine Scale Sets are."""
    if metrics_file is not None:
        metrics.check_path(metrics_file)  # bad input: exit 2 before anything changes
    app = AppContext(state_dir=state_dir or default_state_dir(), libvirt_uri=libvirt_uri,
                     domain_type=domain_type, output=output, wait=not no_wait,
                     verbose=verbose, metrics_file=metrics_file)
    ctx.obj = app
    ctx.call_on_close(app.write_metrics)


# --- global options on every command -------------------------------------------------------
def _set_on_app(attr: str, convert: Callable[[Any], Any]) -> Callable[..., None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        app = ctx.find_object(AppContext)
        if app is not None and value not in (None, 0, False):
            setattr(app, attr, convert(value))
    return callback


def _leaf_commands(group: click.Group) -> list[click.Command]:
    leaves: list[click.Command] = []
    for command in group.commands.values():
        if isinstance(command, click.Group):
            leaves.extend(_leaf_commands(command))
        else:
            leaves.append(command)
    return leaves


def install_common_options() -> None:
    """`orch vmss list -o json` as well as `orch -o json vmss list`: the output, wait and
    verbosity options are accepted after any command too (as az does). Called once, after
    every command module has registered its commands."""
    for command in _leaf_commands(cli):
        command.params.extend([
            click.Option(["-o", "--output"], type=click.Choice(FORMATS), default=None,
                         expose_value=False, callback=_set_on_app("output", str),
                         help="Output format: table, json or yaml."),
            click.Option(["--no-wait"], is_flag=True, default=False, expose_value=False,
                         callback=_set_on_app("wait", lambda v: False),
                         help="Return once the operation is recorded and started."),
            click.Option(["-v", "--verbose"], count=True, expose_value=False,
                         callback=_set_on_app("verbose", int), help="More detail."),
        ])


# --- entry point ----------------------------------------------------------------------------
def fail(message: str, code: int, *, details: Sequence[str] = ()) -> NoReturn:
    logs.error(" ".join(message.split()), exit_code=code, details=details)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    verbose = "-v" in (argv if argv is not None else sys.argv[1:])
    env_format = os.environ.get("ORCH_LOG_FORMAT", "text")
    logs.configure(env_format if env_format in logs.LOG_FORMATS else "text")
    logs.set_scope(None)
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="orch",
                 standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        fail("aborted", 130)
    except click.ClickException as exc:
        fail(exc.format_message(), 2)
    except OrchError as exc:
        fail(exc.one_line(), exc.exit_code, details=exc.details)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except BrokenPipeError:
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: a bug is one line too
        if verbose and logs.current_format() == "json":
            logs.log_traceback(exc)
        elif verbose:
            traceback.print_exc()
        fail(f"internal error: {type(exc).__name__}: {exc} (run with -v for a traceback)", 1)


