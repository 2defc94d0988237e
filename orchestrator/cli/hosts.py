"""`orch host ...`: the libvirt hosts the controller drives (fault domains, placement).

Owned here: the ``orch host`` commands, their flags and columns; ``usecases.hosts`` does the
work.

Called by: cli (importing it registers the commands)
"""

from __future__ import annotations

import click

from orchestrator import logs
from orchestrator.cli import render
from orchestrator.cli.app import AppContext, cli, pass_app
from orchestrator.usecases import hosts as hosts_mod

HOST_COLUMNS = [("name", "NAME"), ("uri", "URI"), ("faultDomain", "FAULT DOMAIN"),
                ("state", "STATE"), ("instances", "INSTANCES"), ("memoryMiBFree", "MEM MiB FREE"),
                ("poolBytesFree", "POOL BYTES FREE"), ("addressesFree", "ADDRESSES FREE")]


@cli.group()
def host() -> None:
    """libvirt hosts: each one daemon reached over libvirt's remote protocol, in a fault
    domain. With none registered, the implicit host `local` (--libvirt-uri) is used."""


@host.command("add")
@click.option("--name", required=True, help="Host name: a-z, 0-9, '-', up to 40.")
@click.option("--uri", required=True,
              help="libvirt URI: qemu:///system, qemu+ssh://USER@HOST/system, "
                   "qemu+tls://HOST/system (qemu+tcp:// only in the lab).")
@click.option("--fault-domain", default=None, help="Fault domain label [the host's name].")
@click.option("--network", default="default", show_default=True,
              help="The libvirt network instances get there.")
@click.option("--pool", default="default", show_default=True,
              help="The storage pool their disks go to there.")
@pass_app
def host_add(app: AppContext, name: str, uri: str, fault_domain: str | None, network: str,
             pool: str) -> None:
    """Register a host after checking that libvirt answers there, that it offers the domain
    type (--domain-type) and that the network and pool exist (nothing is recorded
    otherwise)."""
    view = app.run(hosts_mod.add(app.env(), name=name, uri=uri, fault_domain=fault_domain,
                                 network=network, pool=pool))
    app.show(render.host_json(view))


@host.command("list")
@pass_app
def host_list(app: AppContext) -> None:
    """The hosts with their state (Ready, Cordoned, Unreachable) and room."""
    app.show([render.host_json(v) for v in app.run(hosts_mod.list_hosts(app.env()))],
             columns=HOST_COLUMNS)


@host.command("show")
@click.option("--name", required=True)
@pass_app
def host_show(app: AppContext, name: str) -> None:
    """One host, its state and room."""
    app.show(render.host_json(app.run(hosts_mod.show(app.env(), name))))


@host.command("cordon")
@click.option("--name", required=True)
@pass_app
def host_cordon(app: AppContext, name: str) -> None:
    """No new instances go to the host; its instances stay."""
    app.show(render.host_json(app.run(hosts_mod.set_cordoned(app.env(), name, True))))


@host.command("uncordon")
@click.option("--name", required=True)
@pass_app
def host_uncordon(app: AppContext, name: str) -> None:
    """The host takes new instances again."""
    app.show(render.host_json(app.run(hosts_mod.set_cordoned(app.env(), name, False))))


@host.command("remove")
@click.option("--name", required=True)
@pass_app
def host_remove(app: AppContext, name: str) -> None:
    """Forget a host (refused while an instance of any set lives there), after deleting the
    image copies made in its pool."""
    for problem in app.run(hosts_mod.remove(app.env(), name)):
        logs.warning(problem)
    app.progress(f"removed host {name}")
