"""`orch image import` of downloaded disks: raw and qcow2 are converted to qcow2 with the
format pinned, inspected, and their sha256 recorded; direct kernel boot files are kept with
the image; the domain built for each boot style is the one the golden XML files show."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from orchestrator.errors import InvalidInput
from orchestrator.images import Registry, file_sha256
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
    return path


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
