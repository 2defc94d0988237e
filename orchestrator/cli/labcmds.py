"""`orch lab ...`: the sandboxed lab (libvirtd in network namespace orchlab).

Owned here: the ``orch lab`` commands and their flags; ``lab`` does the work.
Called by: cli (importing it registers the commands)
"""

from __future__ import annotations

import sys
from typing import Any

import click

from orchestrator import lab as lab_mod
from orchestrator.cli.app import (
    AppContext,
    cli,
    pass_app,
)


# --- lab ------------------------------------------------------------------------------------
@cli.group()
def lab() -> None:
    """The sandboxed lab: libvirtd in network namespace `orchlab` (root)."""


def _lab_show(app: AppContext, status: Any) -> None:
    app.show(status.as_dict())


@lab.command("up")
@pass_app
def lab_up(app: AppContext) -> None:
    """Start virtlogd, libvirtd, network and pool in namespace orchlab (idempotent)."""
    _lab_show(app, lab_mod.lab_up(app.ensure_state_dir(), progress=app.progress))


@lab.command("down")
@pass_app
def lab_down(app: AppContext) -> None:
    """Stop what `lab up` started and remove the namespace (set definitions are kept)."""
    _lab_show(app, lab_mod.lab_down(app.ensure_state_dir(), progress=app.progress))


@lab.command("status")
@pass_app
def lab_status(app: AppContext) -> None:
    """Show whether the lab is up."""
    _lab_show(app, lab_mod.lab_status(app.ensure_state_dir()))


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_app
def lab_exec(app: AppContext, argv: tuple[str, ...]) -> None:
    """Run `-- CMD ...` inside the lab namespace with the lab as default; exits with CMD's code."""
    sys.exit(lab_mod.lab_exec(app.ensure_state_dir(), list(argv)))


