"""Local files read the way an upload streams them: in chunks, holes skipped, never whole.

Owned here: ``section_at`` (the data or hole section of a file at its offset, found with
``os.lseek(SEEK_DATA / SEEK_HOLE)``: what libvirt's sparse streams ask of a source),
``Sha256`` (a sha256 fed data chunks and hole lengths, the holes as zeros in bounded pieces)
and ``file_sha256`` (a file's sha256 by sections). A 431 MiB image costs at most one chunk
of memory (``CHUNK``) at a time. A file system without ``SEEK_DATA`` reads as data only.
Called by: hypervisor.fake, hypervisor.libvirt
"""

from __future__ import annotations

import errno
import hashlib
import os

__all__ = ["CHUNK", "Sha256", "file_sha256", "section_at"]

CHUNK = 1024 * 1024
_ZEROS = memoryview(bytes(CHUNK))
# lseek(SEEK_DATA) on a file system that cannot tell holes: read everything as data.
_NO_HOLES = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP)


def section_at(fd: int, size: int) -> tuple[bool, int]:
    """(in data, length) of the section of ``fd`` at its current offset, within the first
    ``size`` bytes: data up to the next hole, or a hole up to the next data (or ``size``).
    At ``size``: (False, 0). The offset is left where it was."""
    cur = os.lseek(fd, 0, os.SEEK_CUR)
    if cur >= size:
        return False, 0
    try:
        try:
            data = os.lseek(fd, cur, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return False, size - cur  # a hole up to the end
            if exc.errno in _NO_HOLES:
                return True, size - cur
            raise
        if data > cur:
            return False, min(data, size) - cur
        hole = os.lseek(fd, cur, os.SEEK_HOLE)
        return True, min(hole, size) - cur
    finally:
        os.lseek(fd, cur, os.SEEK_SET)


class Sha256:
    """A sha256 of a stream of data chunks and holes (which hash as zeros)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.length = 0

    def data(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.length += len(chunk)

    def hole(self, length: int) -> None:
        self.length += length
        while length > 0:
            piece = min(length, CHUNK)
            self._hash.update(_ZEROS[:piece])
            length -= piece

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def file_sha256(path: str) -> str:
    """The sha256 of the file at ``path``, read by sections in ``CHUNK``-sized pieces."""
    digest = Sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        while True:
            in_data, length = section_at(fd, size)
            if length == 0:
                break
            if not in_data:
                digest.hole(length)
                os.lseek(fd, length, os.SEEK_CUR)
                continue
            while length > 0:
                chunk = os.read(fd, min(length, CHUNK))
                if not chunk:
                    raise OSError(errno.EIO, f"{path}: shorter than its size while reading")
                digest.data(chunk)
                length -= len(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()
