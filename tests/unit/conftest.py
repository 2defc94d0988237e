"""Fixtures for unit tests: a fake hypervisor on a fake clock, a store in a temp dir, a
registered fake image, and a ``Service`` wired to them with the simulated prober."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.clock import FakeClock
from orchestrator.engine.operations import Engine, Settings
from orchestrator.engine.simulate import FakeProber
from orchestrator.hypervisor.fake import FakeHypervisor
from orchestrator.images import Registry, file_sha256
from orchestrator.service import Service
from orchestrator.store import ImageRecord, Store


@dataclass
class World:
    clock: FakeClock
    hv: FakeHypervisor
    store: Store
    registry: Registry
    prober: FakeProber
    service: Service
    state_dir: Path
    lines: list[str]

    def register_image(self, name: str, version: str, **extra: object) -> str:
        """A registered image whose files exist (contents are not a real disk); ``extra``
        goes into its manifest (e.g. ``minMemoryMiB=512``)."""
        directory = self.state_dir / "images" / name / version
        directory.mkdir(parents=True)
        files = {"disk": "disk.qcow2", "kernel": "vmlinuz", "initrd": "initrd.img"}
        for key, fname in files.items():
            (directory / fname).write_bytes(f"{name}:{version}:{key}".encode())
            self.hv.add_external_file(str(directory / fname))
        hashes = {k: file_sha256(directory / f) for k, f in files.items()}
        manifest: dict[str, object] = {
            **files,
            "name": name, "version": version, "cmdline": "console=ttyS0 root=/dev/vda rw",
            "sshUser": "root", "healthCommand": "true", "virtualSize": 64 * 2**20,
            "sha256": hashes, **extra,
        }
        (directory / "manifest.json").write_text(json.dumps(manifest))
        self.store.add_image(ImageRecord(name, version, hashes["disk"],
                                         str(directory), manifest, "2026-01-01T00:00:00Z"))
        return f"{name}:{version}"

    def resources(self) -> tuple[set[str], set[str], set[str]]:
        """(domains, volumes in pool default, reservation names on network default)."""
        domains = {d.name for d in self.hv.list_domains()}
        volumes = {v.name for v in self.hv.list_volumes("default")}
        reservations = {r.name for r in self.hv.list_reservations("default")}
        return domains, volumes, reservations


def make_world(tmp_path: Path, *, boot_seconds: float = 6.5,
               shutdown_seconds: float = 1.5) -> World:
    """A fresh fake world in ``tmp_path`` with image tiny:1 registered (usable from any test
    package, e.g. property tests that need a new world per hypothesis example)."""
    clock = FakeClock()
    hv = FakeHypervisor(clock=clock, boot_seconds=boot_seconds,
                        shutdown_seconds=shutdown_seconds)
    store = Store(tmp_path / "orchestrator.db")
    registry = Registry(store, tmp_path)
    prober = FakeProber(hv, clock=clock)
    lines: list[str] = []
    engine = Engine(hv=hv, store=store, registry=registry, clock=clock,
                    settings=Settings(state_dir=tmp_path, pool="default", domain_type="qemu"),
                    log=lines.append)
    service = Service(engine=engine, prober=prober, progress=lines.append)
    w = World(clock, hv, store, registry, prober, service, tmp_path, lines)
    w.register_image("tiny", "1")
    return w


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def snapshot(state: Path) -> dict[str, str]:
    """Every file's hash, the database by its logical content (WAL files vary on reads),
    lock files by their presence (they name their last holder)."""
    files = {}
    for p in sorted(state.rglob("*")):
        if p.is_dir() and not p.is_symlink():
            files[str(p.relative_to(state)) + "/"] = "dir"
            continue
        if p.name.endswith(("-wal", "-shm")):
            continue
        if p.parent.name == "locks":  # runtime: who holds the lock, not state
            files[str(p.relative_to(state))] = "lock"
            continue
        if p.suffix == ".db":
            with sqlite3.connect(p) as db:
                data = "\n".join(db.iterdump()).encode()
        else:
            data = p.read_bytes()
        files[str(p.relative_to(state))] = hashlib.sha256(data).hexdigest()
    return files
