"""`orch image ...`: build, import, list, show and delete registered images.

Owned here: the ``orch image`` commands and their flags; the registry (``images``) does the
work, reached through ``AppContext.registry``.
Called by: cli (importing it registers the commands)
"""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator import logs
from orchestrator.cli import render
from orchestrator.cli.app import (
    IMAGE_COLUMNS,
    AppContext,
    cli,
    pass_app,
)
from orchestrator.clock import RealClock, iso
from orchestrator.model import (
    parse_image_ref,
)
from orchestrator.usecases import images as images_usecase


# --- images -------------------------------------------------------------------------------
@cli.group()
def image() -> None:
    """Register, build and inspect base images (NAME:VERSION, immutable)."""


@image.command("build")
@click.argument("recipe")
@click.option("--version", "version", required=True, help="Version to register, e.g. 1.")
@click.option("--broken", is_flag=True, help="Build an image whose health check fails (tests).")
@pass_app
def image_build(app: AppContext, recipe: str, version: str, broken: bool) -> None:
    """Build RECIPE (images/RECIPE/) and register it as RECIPE:VERSION."""
    img = app.registry.build(recipe, version, broken=broken, progress=app.progress,
                             now=iso(RealClock().now()))
    app.progress(f"registered {img.ref} ({img.record.sha256[:12]})")
    app.show(render.image_json(img))


@image.command("import")
@click.option("--name", required=True)
@click.option("--version", "version", required=True)
@click.option("--file", "file", required=True, type=click.Path(path_type=Path),
              help="qcow2 or raw disk; converted to qcow2 with the format pinned.")
@click.option("--kernel", type=click.Path(path_type=Path), help="Kernel for direct boot.")
@click.option("--initrd", type=click.Path(path_type=Path), help="Initrd for direct boot.")
@click.option("--cmdline", help="Kernel command line for direct boot.")
@click.option("--ssh-user", default="root", show_default=True, help="User that gets the admin key.")
@click.option("--health-command", help="Default health probe command of this image.")
@pass_app
def image_import(app: AppContext, name: str, version: str, file: Path, kernel: Path | None,
                 initrd: Path | None, cmdline: str | None, ssh_user: str,
                 health_command: str | None) -> None:
    """Register a downloaded disk image as NAME:VERSION."""
    img = app.registry.import_image(name, version, file=file, kernel=kernel, initrd=initrd,
                                    cmdline=cmdline, ssh_user=ssh_user,
                                    health_command=health_command, now=iso(RealClock().now()))
    app.show(render.image_json(img))


@image.command("list")
@pass_app
def image_list(app: AppContext) -> None:
    """List registered images."""
    app.show([render.image_json(i) for i in app.registry.list()], columns=IMAGE_COLUMNS)


@image.command("show")
@click.argument("ref")
@pass_app
def image_show(app: AppContext, ref: str) -> None:
    """Show one image (NAME:VERSION)."""
    app.show(render.image_json(app.registry.get(ref)))


@image.command("delete")
@click.argument("ref")
@pass_app
def image_delete(app: AppContext, ref: str) -> None:
    """Delete an image no scale set uses, and its copies on the hosts.

    An image is in use while a set's model names it or an instance runs it or keeps it to
    roll back to. A copy on a host that does not answer stays until the next image delete or
    `orch host remove`."""
    parse_image_ref(ref)
    problems = app.run(images_usecase.delete(app.env(), ref))
    for problem in problems:
        logs.warning(problem)
    app.progress(f"deleted {ref}")


