"""Deleting a registered image, with its copies on the hosts.

Owned here: when an image counts as in use (a set's model names it, or an instance runs it or
keeps it to roll back to), and that deleting it removes its copies from every host where no
other registered image shares the file (``engine.copies.prune``).
Called by: cli.images
"""

from __future__ import annotations

from orchestrator.engine import copies
from orchestrator.usecases.session import Env


def in_use(env: Env, ref: str) -> bool:
    return any(s.spec["model"]["image"] == ref for s in env.store.list_sets()) or any(
        ref in (i.image, i.prev_image) for i in env.store.all_instances())


async def delete(env: Env, ref: str) -> list[str]:
    """Delete image ``ref`` (Conflict while it is in use); returns the problems met
    removing its copies (the image itself is gone by then)."""
    env.registry.delete(ref, in_use=in_use(env, ref))
    keep = copies.image_shas(env.registry.list())
    return await copies.prune(env.engine, keep=keep)
