"""Copies of registered images on each host. An image's files (its disk, and a kernel and
initrd if it boots one) are put once into a host's pool as volumes named by their sha256,
through libvirt's upload stream (``Hypervisor.upload_file``: streamed, verified on arrival),
recorded in the store, and reused by every later instance on that host. Domains and
overlays refer only to these host-local paths, never to the controller's own files.

Owned here: the volume name of a copy (``copy_volume``, ``is_copy``), ``HostImage`` (the paths of one
image on one host), ``Copies`` (what this process has checked, and the locks that make
concurrent steps copy once), ``ensure``, ``recorded`` and ``prune``.
Called by: dryrun.simworld, engine.context, engine.steps, usecases.hosts, usecases.images

A copy is trusted only once the store records it, and the store records it only after
``upload_file`` verified the arrival: a copy cut short by a killed process is found
unrecorded, verified again by ``upload_file`` and replaced if it differs. Between processes
the copy of one file to one host is made under a lock file, so two commands never stream the
same volume at once.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator import locks
from orchestrator.errors import Conflict, HypervisorUnavailable, OrchError
from orchestrator.images import Image
from orchestrator.records import ImageCopyRecord
from orchestrator.store import Store

if TYPE_CHECKING:
    from orchestrator.engine.context import Engine, Where

# How long a command waits for another one that is copying the same file to the same host
# (the debian-12 disk is 431 MiB; over a slow link that takes minutes).
COPY_WAIT = 900.0


def copy_volume(sha256: str, fmt: str) -> str:
    """The name of the volume holding a copy: no set's instance volume can have it
    (those are ``<set>-<id>-…``, and a sha256 has no '-')."""
    return f"image-{sha256}.{'qcow2' if fmt == 'qcow2' else 'raw'}"


def is_copy(volume: str) -> bool:
    """Whether ``volume`` is named as a copy of an image's file."""
    return re.fullmatch(r"image-[0-9a-f]{64}\.(?:qcow2|raw)", volume) is not None


@dataclass(frozen=True)
class HostImage:
    """Where one image's files are on one host: the paths its domains and overlays name."""

    disk: str
    kernel: str | None = None
    initrd: str | None = None


@dataclass(frozen=True)
class _File:
    key: str  # disk | kernel | initrd
    local: Path
    sha256: str
    fmt: str


def files_of(image: Image) -> list[_File]:
    hashes = image.record.manifest.get("sha256", {})
    out = [_File("disk", image.disk, str(hashes.get("disk", image.record.sha256)), "qcow2")]
    for key, path in (("kernel", image.kernel), ("initrd", image.initrd)):
        if path is not None:
            out.append(_File(key, path, str(hashes[key]), "raw"))
    return out


def image_shas(images: list[Image]) -> set[str]:
    """The sha256 of every file of ``images``."""
    return {f.sha256 for image in images for f in files_of(image)}


@dataclass
class Copies:
    """The copies this process found or made, by (host, sha256), and one lock per pair."""

    paths: dict[tuple[str, str], str] = field(default_factory=dict)
    _locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)

    def forget(self) -> None:
        """Look for every copy again when next needed (a new command)."""
        self.paths.clear()

    def lock(self, key: tuple[str, str]) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())


def recorded(store: Store, host: str, image: Image) -> HostImage | None:
    """``image`` on ``host`` as the store records it (the host is not asked); None while a
    file of it has no copy there."""
    paths: dict[str, str] = {}
    for f in files_of(image):
        rec = store.find_image_copy(host, f.sha256)
        if rec is None:
            return None
        paths[f.key] = rec.path
    return HostImage(paths["disk"], paths.get("kernel"), paths.get("initrd"))


async def ensure(engine: Engine, w: Where, image: Image) -> HostImage:
    """``image`` on host ``w``: its files copied there first where they are not yet."""
    paths = {f.key: await _ensure_file(engine, w, f, ref=image.ref) for f in files_of(image)}
    return HostImage(paths["disk"], paths.get("kernel"), paths.get("initrd"))


async def _ensure_file(engine: Engine, w: Where, f: _File, *, ref: str) -> str:
    key = (w.name, f.sha256)
    if key not in engine.copies.paths:
        async with engine.copies.lock(key):
            if key not in engine.copies.paths:
                path = await _present(engine, w, f) or await _copy(engine, w, f, ref=ref)
                engine.copies.paths[key] = path
    return engine.copies.paths[key]


async def _present(engine: Engine, w: Where, f: _File) -> str | None:
    """The path of a recorded copy that the host still lists; a recorded copy it no longer
    lists (deleted by hand) is forgotten."""
    rec = engine.store.find_image_copy(w.name, f.sha256)
    if rec is None:
        return None
    found = await engine.io(w.hv.find_volume, w.pool, rec.volume)
    if found is not None:
        return found.path
    engine.store.forget_image_copy(w.name, f.sha256)
    return None


async def _copy(engine: Engine, w: Where, f: _File, *, ref: str) -> str:
    lock_path = engine.settings.state_dir / "locks" / f"copy-{w.name}-{f.sha256[:16]}.lock"
    purpose = f"copy {ref} {f.key} to host {w.name}"
    deadline = engine.clock.monotonic() + COPY_WAIT
    while isinstance(taken := locks.try_take(lock_path, purpose=purpose), str):
        if engine.clock.monotonic() >= deadline:
            raise Conflict(f"image {ref}: its {f.key} is being copied to host {w.name} by pid "
                           f"{taken} for over {COPY_WAIT:.0f} s; try again when it is done")
        await engine.clock.sleep(engine.settings.poll_interval)
    try:
        done = await _present(engine, w, f)  # the other process may have made it meanwhile
        if done is not None:
            return done
        size = f.local.stat().st_size if f.local.exists() else 0
        engine.log(f"host {w.name}: copying {ref} {f.key} ({size / 2**20:.1f} MiB) "
                   f"into pool {w.pool}")
        vol = await engine.io(w.hv.upload_file, w.pool, name=copy_volume(f.sha256, f.fmt),
                              path=str(f.local), fmt=f.fmt, sha256=f.sha256)
        engine.store.put_image_copy(ImageCopyRecord(
            host=w.name, sha256=f.sha256, volume=vol.name, path=vol.path, created_at=engine.now()))
        return vol.path
    finally:
        locks.release(taken)


async def prune(engine: Engine, *, keep: set[str], hosts: list[str] | None = None) -> list[str]:
    """Delete the recorded copies whose sha256 is not in ``keep`` on ``hosts`` (default:
    every host holding one) that no domain there names; returns the problems met. A host
    that does not answer keeps its copies and their records, for the next prune; a host is
    only contacted when it holds a copy to delete."""
    problems: list[str] = []
    doomed: dict[str, list[ImageCopyRecord]] = {}
    for rec in engine.store.image_copies():
        if rec.sha256 not in keep and (hosts is None or rec.host in hosts):
            doomed.setdefault(rec.host, []).append(rec)
    for host, records in doomed.items():
        try:
            w = engine.at(host)
            # A domain this store does not know (another state dir's, one made by hand) may
            # rest on the same copy: its disk must not lose its backing file.
            users = {path: d.name for d in await engine.io(w.hv.list_domains) for path in d.files}
            for rec in records:
                if rec.path in users:
                    problems.append(f"host {host}: {rec.volume} kept: domain {users[rec.path]} "
                                    "uses it")
                    continue
                try:
                    await engine.io(w.hv.delete_volume, w.pool, rec.volume)
                except HypervisorUnavailable:
                    raise
                except OrchError as exc:
                    problems.append(f"host {host}: delete {rec.volume}: {exc.message}")
                    continue
                engine.store.forget_image_copy(host, rec.sha256)
                engine.copies.paths.pop((host, rec.sha256), None)
        except HypervisorUnavailable:
            problems.append(f"host {host} does not answer: its image copies stay until the "
                            "next `orch image delete` or `orch host remove`")
    return problems
