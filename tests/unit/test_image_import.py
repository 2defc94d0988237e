"""`orch image import` of downloaded disks: raw and qcow2 are converted to qcow2 with the
format pinned, inspected, and their sha256 recorded; direct kernel boot files are kept with
the image; the domain built for each boot style is the one the golden XML files show."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from orchestrator.errors import InvalidInput
from orchestrator.images import Registry, file_sha256, raw_disk_signature
from orchestrator.store import Store

NOW = "2026-11-28T00:00:00Z"


def qemu_img_info(path: Path) -> dict[str, object]:
    out = subprocess.run(["qemu-img", "info", "--output", "json", "-U", str(path)],
                         capture_output=True, text=True, check=True).stdout
    info: dict[str, object] = json.loads(out)
    return info


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(Store(tmp_path / "state" / "orchestrator.db"), tmp_path / "state")


def disk(tmp_path: Path, fmt: str, size: str = "16M") -> Path:
    path = tmp_path / f"download.{fmt}"
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), size], check=True)
    if fmt == "raw":  # a raw disk must look like one: an MBR with one Linux partition
        subprocess.run(["sfdisk", "-q", str(path)], input=b"start=2048, type=83\n",
                       check=True, capture_output=True)
    return path


def _tool(*cmd: str, input: bytes | None = None) -> None:
    subprocess.run(cmd, input=input, check=True, capture_output=True)


def _boot_signature_only(path: Path) -> None:
    """A sector 0 holding nothing but the 0x55AA boot signature (an MBR with no partition)."""
    with path.open("r+b") as fh:
        fh.seek(510)
        fh.write(b"\x55\xaa")


# every way a raw file shows it is a disk, made by the tools that make them
RAW_LAYOUTS = {
    "mbr": lambda p: _tool("sfdisk", "-q", str(p), input=b"start=2048, type=83\n"),
    "gpt": lambda p: _tool("sfdisk", "-q", str(p), input=b"label: gpt\nstart=2048\n"),
    "boot-signature": _boot_signature_only,
    "ext4": lambda p: _tool("mkfs.ext4", "-q", "-F", str(p)),
    "fat": lambda p: _tool("mkfs.vfat", str(p)),
}


@pytest.mark.parametrize("layout", list(RAW_LAYOUTS))
def test_a_raw_file_that_looks_like_a_disk_is_imported(registry: Registry, tmp_path: Path,
                                                      layout: str) -> None:
    source = tmp_path / "download.img"
    source.write_bytes(bytes(16 << 20))
    RAW_LAYOUTS[layout](source)
    image = registry.import_image("cloud", "1", file=source, now=NOW)
    assert qemu_img_info(image.disk)["format"] == "qcow2"


def test_an_iso9660_filesystem_is_a_disk(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "README").write_text("hello\n")
    iso = tmp_path / "download.iso"
    _tool("genisoimage", "-quiet", "-o", str(iso), str(tree))
    assert raw_disk_signature(iso) == "filesystem iso9660"


@pytest.mark.parametrize("content", [
    bytes(1 << 20),
    b"".join(hashlib.sha512(bytes([i, j])).digest() for i in range(16) for j in range(128)),
], ids=["zeros", "random-bytes"])
def test_a_raw_file_of_zeros_or_random_bytes_is_refused_naming_it(
        registry: Registry, tmp_path: Path, content: bytes) -> None:
    source = tmp_path / "download.img"
    source.write_bytes(content)
    assert len(content) % 512 == 0  # whole sectors: the size alone does not give it away
    with pytest.raises(InvalidInput, match=f"^{source}: not a disk image .*blkid found none"):
        registry.import_image("cloud", "1", file=source, now=NOW)
    assert registry.list() == [] and not registry.root.exists()  # nothing registered


def test_a_swap_area_is_not_a_disk(tmp_path: Path) -> None:
    source = tmp_path / "swap.img"
    source.write_bytes(bytes(1 << 20))
    _tool("mkswap", "-q", str(source))
    with pytest.raises(InvalidInput, match="only a swap signature"):
        raw_disk_signature(source)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_a_downloaded_disk_becomes_a_pinned_qcow2_with_its_hash(
        registry: Registry, tmp_path: Path, fmt: str) -> None:
    source = disk(tmp_path, fmt)
    image = registry.import_image("cloud", "1", file=source, ssh_user="debian", now=NOW)
    info = qemu_img_info(image.disk)
    assert info["format"] == "qcow2"
    assert "backing-filename" not in info and "data-file" not in str(info.get("format-specific"))
    assert info["virtual-size"] == 16 * 2**20 == image.virtual_size
    assert image.record.sha256 == file_sha256(image.disk)
    assert image.kernel is None and image.ssh_user == "debian"  # boots from its own disk
    assert registry.verify("cloud:1").record == image.record
    assert source.exists()  # the user's file is read, never moved


def test_kernel_boot_files_are_kept_hashed_with_the_image(registry: Registry,
                                                          tmp_path: Path) -> None:
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"kernel bytes")
    initrd.write_bytes(b"initrd bytes")
    image = registry.import_image("cloud", "2", file=disk(tmp_path, "qcow2"), kernel=kernel,
                                  initrd=initrd, cmdline="console=ttyS0 root=/dev/vda1 ro",
                                  now=NOW)
    assert image.kernel is not None and image.kernel.read_bytes() == b"kernel bytes"
    assert image.initrd is not None and image.initrd.read_bytes() == b"initrd bytes"
    assert image.cmdline == "console=ttyS0 root=/dev/vda1 ro"
    hashes = image.record.manifest["sha256"]
    assert hashes["kernel"] == file_sha256(kernel) and hashes["initrd"] == file_sha256(initrd)
    # a kernel changed under the registered name is refused like a changed disk
    image.kernel.write_bytes(b"other kernel")
    with pytest.raises(InvalidInput, match="changed since it was registered"):
        registry.verify("cloud:2")
