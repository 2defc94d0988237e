"""`orch lab ...`: the sandboxed lab (libvirtd in network namespace orchlab, and simulated
hosts), one per machine (``lab.lab_home``) whatever the state dir; the state dir only gets
the lab's hosts registered (``lab up``) or forgotten (``lab down``).

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
from orchestrator.clock import RealClock, iso


# --- lab ------------------------------------------------------------------------------------
@cli.group()
def lab() -> None:
    """The sandboxed lab: libvirtd in network namespace `orchlab` (root)."""


def _lab_show(app: AppContext, status: Any) -> None:
    app.show(status.as_dict())


@lab.command("up")
@click.option("--hosts", type=click.IntRange(0, lab_mod.HOSTS_MAX), default=None,
              help="Simulated libvirt hosts lab-1..lab-N (each its own namespaces and "
                   "libvirtd, reached over qemu+tcp://), 0 for none; without it, as many as "
                   f"last time (none at first and after `lab down`). At most {lab_mod.HOSTS_MAX}.")
@pass_app
def lab_up(app: AppContext, hosts: int | None) -> None:
    """Start virtlogd, libvirtd, network and pool in namespace orchlab, and the simulated
    hosts asked for (idempotent)."""
    app.ensure_state_dir()
    status = lab_mod.lab_up(lab_mod.lab_home(), hosts=hosts, progress=app.progress)
    _sync_hosts(app)
    _lab_show(app, status)


def _sync_hosts(app: AppContext) -> None:
    """The lab's simulated hosts are the controller's hosts lab-1..N (fault domains fd-N)."""
    from orchestrator.usecases.hosts import sync_lab_hosts

    hosts = [(h.name, h.uri, h.fault_domain, h.network, h.pool)
             for h in lab_mod.lab_hosts(lab_mod.lab_home()) if h.up]
    for line in sync_lab_hosts(app.store, hosts, now=iso(RealClock().now())):
        app.progress(line)


@lab.command("down")
@pass_app
def lab_down(app: AppContext) -> None:
    """Stop what `lab up` started and remove the namespace (set definitions are kept)."""
    app.ensure_state_dir()
    status = lab_mod.lab_down(lab_mod.lab_home(), progress=app.progress)
    _sync_hosts(app)
    _lab_show(app, status)


@lab.command("status")
@pass_app
def lab_status(app: AppContext) -> None:
    """Show whether the lab is up."""
    _lab_show(app, lab_mod.lab_status(lab_mod.lab_home()))


_HOST_COLUMNS = (("name", "NAME"), ("uri", "URI"), ("faultDomain", "FAULT DOMAIN"),
                 ("network", "NETWORK"), ("pool", "POOL"), ("answers", "ANSWERS"),
                 ("up", "UP"))


@lab.command("hosts")
@pass_app
def lab_hosts(app: AppContext) -> None:
    """List the simulated hosts (`lab up --hosts N`): name, URI, fault domain, network, pool,
    whether the daemon answers."""
    app.show([host.as_dict() for host in lab_mod.lab_hosts(lab_mod.lab_home())],
             columns=_HOST_COLUMNS)


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_app
def lab_exec(app: AppContext, argv: tuple[str, ...]) -> None:
    """Run `-- CMD ...` inside the lab namespace with the lab as default; exits with CMD's code."""
    sys.exit(lab_mod.lab_exec(app.ensure_state_dir(), list(argv), home=lab_mod.lab_home()))


