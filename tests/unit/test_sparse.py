"""Local files read as an upload streams them: sections by SEEK_DATA/SEEK_HOLE, sha256 in
chunks with holes as zeros."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from orchestrator.hypervisor.sparse import CHUNK, Sha256, file_sha256, section_at

KiB = 1024
MiB = 1024 * KiB


def sparse_file(path: Path, layout: list[tuple[str, int]]) -> bytes:
    """Write ``layout`` (("data" | "hole", length), ...) to ``path``; its full content."""
    content = bytearray()
    with open(path, "wb") as f:
        for kind, length in layout:
            if kind == "data":
                chunk = (hashlib.sha256(str(len(content)).encode()).digest() * length)[:length]
                f.write(chunk)
                content += chunk
            else:
                f.seek(length, os.SEEK_CUR)
                content += bytes(length)
        f.truncate(len(content))
    return bytes(content)


def sections(path: Path) -> list[tuple[bool, int]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        found = []
        while True:
            in_data, length = section_at(fd, size)
            if length == 0:
                return found
            before = os.lseek(fd, 0, os.SEEK_CUR)
            found.append((in_data, length))
            assert os.lseek(fd, 0, os.SEEK_CUR) == before  # the offset is left alone
            os.lseek(fd, length, os.SEEK_CUR)
    finally:
        os.close(fd)


def test_sections_follow_the_files_data_and_holes(tmp_path: Path) -> None:
    path = tmp_path / "image.raw"
    sparse_file(path, [("data", 64 * KiB), ("hole", 4 * MiB), ("data", 8 * KiB),
                       ("hole", 2 * MiB)])
    found = sections(path)
    if found == [(True, path.stat().st_size)]:
        pytest.skip("this file system does not report holes")
    # a file system rounds data to its blocks: compare where data and holes begin and end
    assert [in_data for in_data, _ in found] == [True, False, True, False]
    assert sum(length for _, length in found) == path.stat().st_size
    assert found[0][1] >= 64 * KiB and found[1][1] >= 3 * MiB and found[3][1] >= MiB


def test_sections_stop_at_the_size_given(tmp_path: Path) -> None:
    path = tmp_path / "image.raw"
    sparse_file(path, [("data", 8 * KiB), ("hole", MiB)])
    fd = os.open(path, os.O_RDONLY)
    try:
        total = 0
        while True:
            _in_data, length = section_at(fd, 4 * KiB + 1)
            if length == 0:
                break
            total += length
            os.lseek(fd, length, os.SEEK_CUR)
        assert total == 4 * KiB + 1
    finally:
        os.close(fd)


@pytest.mark.parametrize("layout", [
    [("data", 3 * CHUNK + 17)],
    [("hole", 5 * MiB)],
    [("data", 100), ("hole", 3 * MiB + 5), ("data", 4 * KiB), ("hole", 7 * MiB)],
    [("hole", 2 * MiB), ("data", 2 * CHUNK)],
    [],
], ids=["data", "hole", "mixed", "leading-hole", "empty"])
def test_file_sha256_is_the_sha256_of_the_content(tmp_path: Path,
                                                  layout: list[tuple[str, int]]) -> None:
    path = tmp_path / "image.raw"
    content = sparse_file(path, layout)
    assert file_sha256(str(path)) == hashlib.sha256(content).hexdigest()


def test_sha256_hashes_holes_as_zeros_in_pieces() -> None:
    streamed = Sha256()
    streamed.data(b"head")
    streamed.hole(3 * CHUNK + 5)
    streamed.data(b"tail")
    whole = hashlib.sha256(b"head" + bytes(3 * CHUNK + 5) + b"tail").hexdigest()
    assert streamed.hexdigest() == whole and streamed.length == 8 + 3 * CHUNK + 5
