"""The image registry: immutable ``NAME:VERSION`` images, their files, sha256 and manifest.

Owned here: building images from the recipes under ``images/`` (``build``), what
``NAME:latest`` resolves to (``get``), importing a
downloaded disk (``import_image``), inspecting disk files with ``qemu-img info`` (format
pinned, no backing file or data-file inside; a raw file must carry a disk's signatures, as
``blkid -p`` finds them), verifying that a registered image has not
changed (``verify``), and deleting.
Called by: cli.app, cli.render, dryrun.simworld, engine.addresses, engine.context,
engine.copies, engine.steps, usecases.osupgrades, usecases.placement, usecases.session,
usecases.sets, usecases.watch
``cli.app`` hands the ``Registry`` to the image commands and the engine; the use cases resolve
and verifies the model's image before any instance is touched.

Layout: ``<state>/images/<name>/<version>/{disk.qcow2, vmlinuz?, initrd.img?, manifest.json}``,
directories 0755 and files 0644 so that libvirt's qemu user can read them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import locks
from orchestrator.errors import (
    Conflict,
    EnvironmentProblem,
    InvalidInput,
    NotFound,
    OperationFailed,
    SecurityError,
)
from orchestrator.model import IMAGE_NAME_RE, IMAGE_VERSION_RE, LATEST, parse_image_ref, version_key
from orchestrator.store import ImageRecord, Store

RECIPES = ("tiny", "debian-12")
# recipes whose build.sh takes --broken (an image whose health command fails, for tests)
_BROKEN_RECIPES = ("tiny",)
DISK_FILE = "disk.qcow2"
_HASHED_KEYS = ("disk", "kernel", "initrd")


def recipes_dir() -> Path:
    """Where the image recipes live: ``ORCH_IMAGES_DIR`` or the repository's ``images/``."""
    env = os.environ.get("ORCH_IMAGES_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "images"


@dataclass(frozen=True)
class Image:
    """A registered image, resolved to absolute paths (each made once per ``Image``: every
    domain built from the image names them)."""

    record: ImageRecord

    @property
    def ref(self) -> str:
        return self.record.ref

    @functools.cached_property
    def directory(self) -> Path:
        return Path(self.record.path)

    @functools.cached_property
    def disk(self) -> Path:
        return self.directory / str(self.record.manifest.get("disk", DISK_FILE))

    def _file(self, key: str) -> Path | None:
        value = self.record.manifest.get(key)
        return self.directory / str(value) if value else None

    @functools.cached_property
    def kernel(self) -> Path | None:
        return self._file("kernel")

    @functools.cached_property
    def initrd(self) -> Path | None:
        return self._file("initrd")

    @property
    def cmdline(self) -> str | None:
        value = self.record.manifest.get("cmdline")
        return str(value) if value else None

    @property
    def ssh_user(self) -> str:
        return str(self.record.manifest.get("sshUser", "root"))

    @property
    def health_command(self) -> str:
        return str(self.record.manifest.get("healthCommand") or "true")

    @property
    def virtual_size(self) -> int:
        return int(self.record.manifest.get("virtualSize", 0))

    @property
    def min_memory_mib(self) -> int:
        """The least memory the image boots with (manifest ``minMemoryMiB``; 0: no minimum)."""
        return int(self.record.manifest.get("minMemoryMiB") or 0)

    def check_memory(self, memory_mib: int) -> None:
        """Refuses (bad input) a model giving this image less memory than it declares it needs."""
        if memory_mib < self.min_memory_mib:
            raise InvalidInput(
                f"image {self.ref} needs at least {self.min_memory_mib} MiB of memory, the model "
                f"gives it {memory_mib} MiB (--memory {self.min_memory_mib})"
            )


class Registry:
    def __init__(self, store: Store, state_dir: Path) -> None:
        self.store = store
        self.root = state_dir / "images"
        self.lock_path = state_dir / "locks" / "images.lock"
        # made with the state, so that a refused command finds it there and changes nothing
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        self.lock_path.touch(mode=0o600, exist_ok=True)

    # --- queries -------------------------------------------------------------------------
    def list(self) -> list[Image]:
        return [Image(r) for r in self.store.list_images()]

    def get(self, ref: str, *, skip: frozenset[str] = frozenset()) -> Image:
        """The registered image ``ref``; ``NAME:latest`` is NAME's highest version whose
        ref is not in ``skip``."""
        name, version = parse_image_ref(ref)
        if version == LATEST:
            versions = sorted((r for r in self.store.list_images()
                               if r.name == name and r.ref not in skip),
                              key=lambda r: version_key(r.version))
            if not versions:
                raise NotFound(f"image {ref}: no version of {name} is registered"
                               + (f" but {', '.join(sorted(skip))}" if skip else "")
                               + " (see `orch image list`)")
            return Image(versions[-1])
        rec = self.store.find_image(name, version)
        if rec is None:
            raise NotFound(f"image {ref} is not registered (see `orch image list`)")
        return Image(rec)

    def verify(self, ref: str) -> Image:
        """The image, after checking its files still match the recorded sha256."""
        image = self.get(ref)
        self.check_files(image)
        return image

    @staticmethod
    def check_files(image: Image) -> None:
        """InvalidInput unless the image's files still match the recorded sha256. Reads the
        files only (no store access), so it may run in a worker thread."""
        ref = image.ref
        hashes = image.record.manifest.get("sha256", {})
        for key in _HASHED_KEYS:
            path = image._file(key) if key != "disk" else image.disk
            if path is None:
                continue
            if path.is_symlink() or not path.is_file():
                raise InvalidInput(f"image {ref}: file {path} is missing or not a regular file")
            if file_sha256(path) != hashes.get(key):
                raise InvalidInput(
                    f"image {ref}: {path.name} changed since it was registered; images are "
                    "immutable (register a new version)"
                )

    # --- build -------------------------------------------------------------------------
    def _locked(self, purpose: str) -> contextlib.AbstractContextManager[None]:
        """One writer of the registry at a time (two builds of one NAME:VERSION must not
        race to register it); readers need no lock."""
        return locks.hold(self.lock_path, what="the image registry", purpose=purpose)

    def build(self, recipe: str, version: str, *, broken: bool = False,
              progress: Callable[[str], None] = lambda s: None, now: str) -> Image:
        with self._locked(f"build {recipe}:{version}"):
            return self._build(recipe, version, broken=broken, progress=progress, now=now)

    def _build(self, recipe: str, version: str, *, broken: bool,
               progress: Callable[[str], None], now: str) -> Image:
        if recipe not in RECIPES:
            raise InvalidInput(f"unknown image recipe {recipe!r} (known: {', '.join(RECIPES)})")
        if broken and recipe not in _BROKEN_RECIPES:
            raise InvalidInput(f"--broken is only for the {', '.join(_BROKEN_RECIPES)} recipe")
        self._check_new(recipe, version)
        script = recipes_dir() / recipe / "build.sh"
        if not script.is_file():
            raise EnvironmentProblem(f"image recipe {script} not found", hint="set ORCH_IMAGES_DIR")
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".build-", dir=self.root) as tmp:
            out = Path(tmp) / "out"
            cmd = ["bash", str(script), str(out), version] + (["--broken"] if broken else [])
            progress(f"building {recipe}:{version}{' (broken)' if broken else ''}")
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise OperationFailed(f"image recipe {recipe} failed: {recipe_failure(proc)}")
            # the recipe's last line says what it built: size, kernel, time
            summary = proc.stdout.strip().splitlines()
            if summary:
                progress(summary[-1])
            manifest = json.loads((out / "manifest.json").read_text())
            return self._register(recipe, version, out, manifest, now=now)

    # --- import ------------------------------------------------------------------------
    def import_image(self, name: str, version: str, *, file: Path, kernel: Path | None = None,
                     initrd: Path | None = None, cmdline: str | None = None,
                     ssh_user: str = "root", health_command: str | None = None,
                     now: str) -> Image:
        with self._locked(f"import {name}:{version}"):
            return self._import(name, version, file=file, kernel=kernel, initrd=initrd,
                                cmdline=cmdline, ssh_user=ssh_user,
                                health_command=health_command, now=now)

    def _import(self, name: str, version: str, *, file: Path, kernel: Path | None = None,
                     initrd: Path | None = None, cmdline: str | None = None,
                     ssh_user: str = "root", health_command: str | None = None,
                     now: str) -> Image:
        self._check_new(name, version)
        sources = {"disk": file, "kernel": kernel, "initrd": initrd}
        for key, src in sources.items():
            # a user's path, so refused as bad input (exit 2), before inspect_disk would call
            # it a SecurityError: what a link points at may change between check and copy
            if src is not None and src.is_symlink():
                raise InvalidInput(f"{key} file {src} is a symbolic link; give the real file")
            if src is not None and (not src.exists() or not src.is_file()):
                raise InvalidInput(f"{key} file {src} does not exist or is not a regular file")
        if initrd is not None and kernel is None:
            raise InvalidInput("--initrd needs --kernel")
        if cmdline is not None and kernel is None:
            raise InvalidInput("--cmdline needs --kernel")
        info = inspect_disk(file)
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".import-", dir=self.root) as tmp:
            out = Path(tmp) / "out"
            out.mkdir()
            _run(["qemu-img", "convert", "-q", "-f", info["format"], "-O", "qcow2",
                  str(file), str(out / DISK_FILE)], what="qemu-img convert")
            manifest: dict[str, Any] = {"name": name, "version": version, "format": "qcow2",
                                        "sshUser": ssh_user}
            if health_command:
                manifest["healthCommand"] = health_command
            if kernel is not None:
                shutil.copyfile(kernel, out / "vmlinuz")
                manifest["kernel"] = "vmlinuz"
                manifest["cmdline"] = cmdline or "console=ttyS0 root=/dev/vda rw"
            if initrd is not None:
                shutil.copyfile(initrd, out / "initrd.img")
                manifest["initrd"] = "initrd.img"
            return self._register(name, version, out, manifest, now=now)

    def delete(self, ref: str, *, in_use: bool) -> None:
        with self._locked(f"delete {ref}"):
            self._delete(ref, in_use=in_use)

    def _delete(self, ref: str, *, in_use: bool) -> None:
        image = self.get(ref)
        if in_use:
            raise Conflict(f"image {ref} is used by a scale set; delete or update the set first")
        self.store.delete_image(image.record.name, image.record.version)
        shutil.rmtree(image.directory, ignore_errors=True)

    # --- internals -----------------------------------------------------------------------
    def _check_new(self, name: str, version: str) -> None:
        if not IMAGE_NAME_RE.fullmatch(name):
            raise InvalidInput(f"invalid image name {name!r}: a-z, 0-9, '-', starting with a letter")
        if not IMAGE_VERSION_RE.fullmatch(version):
            raise InvalidInput(f"invalid image version {version!r}: A-Za-z0-9 . _ -, at most 40")
        if version == LATEST:
            raise InvalidInput(f"image version {LATEST!r} is reserved: {name}:{LATEST} names the "
                               f"highest registered version of {name}")
        if self.store.find_image(name, version) is not None:
            raise InvalidInput(f"image {name}:{version} is already registered; images are immutable")

    def _register(self, name: str, version: str, out: Path, manifest: dict[str, Any],
                  *, now: str) -> Image:
        manifest = dict(manifest)
        manifest.setdefault("disk", DISK_FILE)
        info = inspect_disk(out / manifest["disk"])
        if info["format"] != "qcow2":
            raise OperationFailed(f"recipe produced a {info['format']} disk, expected qcow2")
        manifest["virtualSize"] = int(info["virtual-size"])
        manifest["sha256"] = {
            key: file_sha256(out / str(manifest[key]))
            for key in _HASHED_KEYS
            if manifest.get(key)
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        final = self.root / name / version
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        os.chmod(final.parent, 0o755)
        for path in out.iterdir():
            os.chmod(path, 0o644)
        os.chmod(out, 0o755)
        if final.exists():
            shutil.rmtree(final)  # a leftover of an interrupted registration, not in the store
        os.rename(out, final)
        rec = ImageRecord(name, version, manifest["sha256"]["disk"], str(final), manifest, now)
        try:
            self.store.add_image(rec)
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
        return Image(rec)


# The line images/lib/recipe.sh prints when a build fails: `recipe-error: step S: ...`.
RECIPE_ERROR_MARK = "recipe-error: "


def recipe_failure(proc: subprocess.CompletedProcess[str]) -> str:
    """Why a recipe failed, in one line: its own last error line (the step, the command, the
    reason), which what it prints after (a clean-up's complaint) does not hide; else its last
    line on stderr (a recipe not using the shared helpers), then on stdout; else its status."""
    errors = [line[len(RECIPE_ERROR_MARK):].strip() for line in proc.stderr.splitlines()
              if line.startswith(RECIPE_ERROR_MARK)]
    if errors:
        return errors[-1]
    for stream in (proc.stderr, proc.stdout):
        lines = [line.strip() for line in stream.splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return f"exit {proc.returncode}"


def inspect_disk(path: Path) -> dict[str, Any]:
    """``qemu-img info`` of a disk file, refusing anything that points outside itself."""
    if path.is_symlink():
        raise SecurityError(f"{path} is a symbolic link; give the real file")
    proc = _run(["qemu-img", "info", "--output=json", str(path)], what="qemu-img info")
    try:
        info: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path}: qemu-img could not read it") from exc
    fmt = info.get("format")
    if fmt not in ("qcow2", "raw"):
        raise InvalidInput(f"{path}: format {fmt!r} not supported (qcow2 or raw)")
    if fmt == "raw":
        # qemu-img calls any file it cannot recognise "raw", so a text file or a truncated
        # download would register as a disk; a real raw disk is whole 512-byte sectors
        size = path.stat().st_size
        if size == 0:
            raise InvalidInput(f"{path}: is empty, not a disk image")
        if size % 512:
            raise InvalidInput(f"{path}: not a disk image (not qcow2, and {size} bytes is not "
                               "a whole number of 512-byte sectors for a raw disk)")
        raw_disk_signature(path)  # refuses random bytes, zeros, a swap area
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise InvalidInput(f"{path}: has a backing file; give a self-contained image")
    data = (info.get("format-specific") or {}).get("data") or {}
    if data.get("data-file"):
        raise InvalidInput(f"{path}: has an external data-file; give a self-contained image")
    if fmt == "qcow2":
        _run(["qemu-img", "check", "-q", "-f", "qcow2", str(path)], what="qemu-img check",
             bad_input=True)
    return info


# What libblkid calls a signature's use: a raw image must hold a partition table or one of
# these; "other" (a swap area) and "raid" (an md or LVM member) are parts of a machine's
# storage, not a disk a guest boots from.
_DISK_USAGES = ("filesystem", "crypto")


def raw_disk_signature(path: Path) -> str:
    """What makes a raw file a disk, as util-linux's ``blkid -p`` (low-level probing of the
    file's own bytes, no cache) finds it: ``partition table dos``, ``filesystem ext4``, ...
    InvalidInput naming the file when it holds no partition table, filesystem or boot
    signature (random bytes, zeros) or only a swap area or a RAID/LVM member. libblkid knows
    the MBR and GPT tables, ext2/3/4, XFS, ISO9660, FAT and many more, so none is parsed here."""
    if shutil.which("blkid") is None:
        raise EnvironmentProblem("blkid not found (util-linux)", hint="run `make setup`")
    proc = subprocess.run(["blkid", "-p", "-o", "export", str(path)],
                          capture_output=True, text=True, check=False)
    if proc.returncode == 2:  # blkid: nothing found
        raise InvalidInput(f"{path}: not a disk image (a raw disk needs a partition table, a "
                           "filesystem or a boot signature; blkid found none)")
    if proc.returncode == 8:
        # "ambivalent": several filesystem superblocks, each a disk's signature (a filesystem
        # made over an older one); the guest's kernel sorts them out, as it would on a disk
        return "several filesystem signatures"
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise OperationFailed(f"blkid -p {path}: {lines[-1] if lines else proc.returncode}")
    found = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    if found.get("PTTYPE"):
        return f"partition table {found['PTTYPE']}"
    kind, usage = found.get("TYPE", "?"), found.get("USAGE", "")
    if usage not in _DISK_USAGES:
        raise InvalidInput(f"{path}: not a disk image (blkid found only a {kind} signature, "
                           "no partition table or filesystem)")
    return f"filesystem {kind}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _run(cmd: list[str], *, what: str, bad_input: bool = False) -> subprocess.CompletedProcess[str]:
    if shutil.which(cmd[0]) is None:
        raise EnvironmentProblem(f"{cmd[0]} not found", hint="run `make setup`")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        detail = lines[-1] if lines else f"exit {proc.returncode}"
        raise (InvalidInput if bad_input or what == "qemu-img info" else OperationFailed)(
            f"{what} {cmd[-1]}: {detail}"
        )
    return proc
