"""Advisory locks between orch processes: one writer per scale set, one per image registry.

Owned here: ``hold``, an exclusive, non-blocking ``flock`` on a lock file that records who
holds it; ``try_take``/``release``, the same lock for a caller that waits for it itself;
``holder``, who the file names. The kernel drops a lock when its process dies, so a lock of a killed process is
taken over by the next one without any clean-up.
Called by: api.routes, engine.copies, images, usecases.session
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from orchestrator.errors import Conflict


@contextlib.contextmanager
def hold(path: Path, *, what: str, purpose: str) -> Iterator[None]:
    """Hold the lock at ``path`` (``what`` names the locked thing in the error, ``purpose``
    is recorded for whoever finds it held), or raise Conflict (exit 3) naming the holder."""
    taken = try_take(path, purpose=purpose)
    if isinstance(taken, str):
        raise Conflict(f"{what} is locked by pid {taken}")
    try:
        yield
    finally:
        release(taken)


def try_take(path: Path, *, purpose: str) -> int | str:
    """Take the lock at ``path`` without waiting: its file descriptor (hand it to
    ``release``), or who holds it now."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 128, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        return holder
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} ({purpose})".encode(), 0)
    return fd


def holder(path: Path) -> str | None:
    """Who took the lock at ``path`` last (``pid (purpose)``), as its file says; whether
    the lock is held now is for ``flock`` to say, not this."""
    try:
        with path.open("rb") as fh:
            return fh.read(128).decode(errors="replace").strip() or None
    except OSError:
        return None


def release(fd: int) -> None:
    os.close(fd)
