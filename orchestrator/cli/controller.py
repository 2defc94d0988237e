"""`orch controller run [--once]`: the reconcile loop as a command.

Owned here: the command, its pass interval and the wait between passes
(``pause_between_passes``, the one seam tests replace); ``usecases.controller`` does a pass.

Called by: cli (importing it registers the commands)
"""

from __future__ import annotations

import threading

import click

from orchestrator.cli.app import AppContext, cli, pass_app
from orchestrator.errors import OperationFailed
from orchestrator.usecases import controller as controller_mod


@cli.group()
def controller() -> None:
    """The reconcile loop: resumes interrupted work, rolls out recorded model changes
    (Automatic and Rolling sets), restarts instances that should run."""


@controller.command("run")
@click.option("--once", is_flag=True, help="One pass over every set, then exit.")
@click.option("--interval", type=click.FloatRange(min=1, max=3600), default=15, show_default=True,
              help="Seconds between passes.")
@pass_app
def controller_run(app: AppContext, once: bool, interval: float) -> None:
    """Carry out pending and interrupted work; with --once, exit when done (exit 1 if a set
    had a problem), else keep watching until interrupted. The metrics file (--metrics-file)
    is written after every pass."""
    env = app.env()
    while True:
        report = app.run(controller_mod.run_pass(env))
        for line in report.problems:
            app.progress(f"problem: {line}")
        app.write_metrics()
        if once:
            app.show(report.as_dict())
            if report.problems:
                raise OperationFailed(f"{len(report.problems)} problem(s): {report.problems[0]}")
            return
        if pause_between_passes(interval):
            return


def pause_between_passes(seconds: float) -> bool:
    """Wait until the controller's next pass is due; True ends the loop. The one seam the
    tests replace to run passes without waiting."""
    return threading.Event().wait(seconds)
