"""Advisory locks between orch processes: one writer per scale set, one per image registry.

Owned here: ``hold``, an exclusive, non-blocking ``flock`` on a lock file that records who
holds it. The kernel drops a lock when its process dies, so a lock of a killed process is
taken over by the next one without any clean-up.
Called by: images, usecases.session
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.pread(fd, 128, 0).decode(errors="replace").strip() or "another process"
            raise Conflict(f"{what} is locked by pid {holder}") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} ({purpose})".encode(), 0)
        yield
    finally:
        os.close(fd)
