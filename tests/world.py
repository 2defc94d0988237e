"""The fake world every test layer shares: a fake hypervisor on a fake clock, a store in a
temp dir, a registered fake image, and the use cases wired to them with the simulated
prober (``Env``). ``Commands``, ``Upgrades`` and ``Reconciler`` call the use cases as the
CLI does (one ``asyncio.run`` per command, records rendered to their ``-o json`` form), so
tests read like the commands a user types.

Used by tests/unit, tests/property, tests/libvirt, tests/api and tests/browser (there on
the real clock: ``make_world(..., clock=RealClock())``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import sqlite3
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from orchestrator import locks
from orchestrator.cli import render
from orchestrator.clock import Clock, FakeClock
from orchestrator.engine.context import Engine, Settings, inline
from orchestrator.engine.copies import is_copy
from orchestrator.engine.hosts import Fleet
from orchestrator.engine.simulate import FakeProber
from orchestrator.errors import HypervisorUnavailable
from orchestrator.hypervisor.fake import DEFAULT_NETWORKS, DEFAULT_POOLS, FakeHypervisor
from orchestrator.images import Registry, file_sha256
from orchestrator.model import ScaleSetSpec
from orchestrator.store import ImageRecord, SetRecord, Store
from orchestrator.usecases import controller, hosts, recovery, rolling, sets, updates, views
from orchestrator.usecases.session import Env

T = TypeVar("T")


def run(work: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(work)


def as_command(env: Env, use_case: Callable[[Env], Coroutine[Any, Any, T]]) -> T:
    """Run ``use_case`` as a command does: on its own event loop. Called while another
    command's loop runs (a test hook standing for a second process), it runs in a thread of
    its own with its own store connection, as a second ``orch`` process would."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(use_case(env))

    def other_process() -> T:
        store = Store(env.store.path)
        try:
            engine = dataclasses.replace(env.engine, store=store,
                                         registry=Registry(store, env.state_dir),
                                         operation_id=None)
            return asyncio.run(use_case(dataclasses.replace(env, engine=engine)))
        finally:
            store.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(other_process).result()


class Commands:
    """The lifecycle and view commands of one world, called as the CLI calls them."""

    def __init__(self, env: Env) -> None:
        self.env = env

    @property
    def engine(self) -> Engine:
        return self.env.engine

    @property
    def store(self) -> Store:
        return self.env.store

    def spec_of(self, rec: SetRecord) -> ScaleSetSpec:
        return self.env.spec_of(rec.name)

    def create(self, spec: ScaleSetSpec, *, wait: bool = True) -> dict[str, Any]:
        return render.set_json(run(sets.create(self.env, spec, wait=wait)))

    def scale(self, name: str, capacity: int, *, wait: bool = True) -> dict[str, Any]:
        return render.set_json(run(sets.scale(self.env, name, capacity, wait=wait)))

    def delete(self, name: str) -> None:
        run(sets.delete(self.env, name))

    def delete_instances(self, name: str, ids: Sequence[int]) -> dict[str, Any]:
        return render.set_json(run(sets.delete_instances(self.env, name, ids)))

    def protect(self, name: str, instance_id: int, *, scale_in: bool | None,
                set_actions: bool | None) -> dict[str, Any]:
        return render.instance_detail_json(run(sets.protect(
            self.env, name, instance_id, scale_in=scale_in, set_actions=set_actions)))

    def power(self, name: str, ids: Sequence[int], action: str, *,
              wait: bool = True) -> list[dict[str, Any]]:
        return [render.instance_json(v)
                for v in run(sets.power(self.env, name, ids, action, wait=wait))]

    def list_instances(self, name: str, *, refresh: bool = True) -> list[dict[str, Any]]:
        return [render.instance_json(v)
                for v in run(views.instance_views(self.env, name, refresh=refresh))]

    def instance_view(self, name: str, instance_id: int, *,
                      refresh: bool = True) -> dict[str, Any]:
        return render.instance_detail_json(run(views.instance_view(
            self.env, name, instance_id, refresh=refresh)))

    def refresh_health(self, name: str) -> None:
        run(views.instance_views(self.env, name, refresh=True))

    def set_view(self, rec: SetRecord) -> dict[str, Any]:
        return render.set_json(views.set_view(self.env, rec))

    def operations_view(self, name: str) -> list[dict[str, Any]]:
        return [render.operation_json(op) for op in views.operations(self.env, name)]

    @contextlib.contextmanager
    def locked(self, name: str, purpose: str) -> Iterator[None]:
        """Hold the set's lock as another command would."""
        with locks.hold(self.env.lock_path(name), what=f"scale set {name}", purpose=purpose):
            yield


class Upgrades:
    """The model-change and rolling-upgrade commands of one world."""

    def __init__(self, service: Commands) -> None:
        self.service = service
        self.env = service.env

    @property
    def store(self) -> Store:
        return self.env.store

    def apply(self, spec: ScaleSetSpec, *, wait: bool = True) -> dict[str, Any]:
        return render.set_json(run(updates.apply(self.env, spec, wait=wait)))

    def update(self, name: str, changes: dict[str, Any], *, wait: bool = True,
               allow_surge_fallback: bool = False) -> dict[str, Any]:
        return render.set_json(run(updates.update(self.env, name, changes, wait=wait,
                                                  allow_surge_fallback=allow_surge_fallback)))

    def update_instances(self, name: str, ids: Sequence[int] | None) -> list[dict[str, Any]]:
        return [render.instance_json(v) for v in run(updates.update_instances(self.env, name, ids))]

    def upgrade_all(self, name: str) -> None:
        run(updates.upgrade_all(self.env, name))

    def reimage(self, name: str, ids: Sequence[int] | None, *, all_disks: bool = False,
                wait: bool = True) -> list[dict[str, Any]]:
        return [render.instance_json(v) for v in run(updates.reimage(
            self.env, name, ids, all_disks=all_disks, wait=wait))]

    def start_rolling(self, name: str, *, allow_surge_fallback: bool = False) -> dict[str, Any]:
        return render.rolling_json(run(rolling.start(self.env, name,
                                                     allow_surge_fallback=allow_surge_fallback)))

    def cancel_rolling(self, name: str) -> dict[str, Any]:
        return render.rolling_json(as_command(self.env, lambda env: rolling.cancel(env, name)))

    def latest_status(self, name: str) -> dict[str, Any]:
        return render.rolling_json(rolling.status(self.env, name))


class Reconciler:
    """`orch controller run --once` in one world."""

    def __init__(self, upgrades: Upgrades) -> None:
        self.env = upgrades.env

    def run_pass(self) -> recovery.PassReport:
        return run(controller.run_pass(self.env))


@dataclass
class World:
    clock: Clock  # a FakeClock unless make_world was given another
    hv: FakeHypervisor
    store: Store
    registry: Registry
    prober: FakeProber
    env: Env
    state_dir: Path
    lines: list[str]
    # further fake hosts by URI (``add_host``); the implicit host is ``hv``
    fakes: dict[str, FakeHypervisor] = dataclasses.field(default_factory=dict)

    def connect(self, uri: str) -> FakeHypervisor:
        """The fleet's way to a host: the fake registered under ``uri``, else unreachable."""
        if uri not in self.fakes:
            raise HypervisorUnavailable(f"cannot connect to {uri}: no such fake host")
        return self.fakes[uri]

    def add_host(self, name: str, *, fault_domain: str | None = None,
                 register: bool = True, pool: str = "default",
                 network: str = "default") -> FakeHypervisor:
        """A fake libvirt host (its own network ``network``, 'default' unless told, and its
        pool ``pool``, the only one it has), registered with ``orch host add`` unless
        ``register`` is false."""
        hv = FakeHypervisor(clock=self.clock, boot_seconds=self.hv.boot_seconds,
                            shutdown_seconds=self.hv.shutdown_seconds,
                            uri=f"qemu+tcp://{name}/system",
                            pools=None if pool == "default" else [
                                dataclasses.replace(DEFAULT_POOLS[0], name=pool,
                                                    path=f"/var/lib/{name}/{pool}")],
                            networks=None if network == "default" else [
                                dataclasses.replace(DEFAULT_NETWORKS[0], name=network)])
        for path in self.hv.external_files:
            hv.add_external_file(path)
        self.fakes[hv.uri] = hv
        self.prober.hosts.append(hv)
        if register:
            run(hosts.add(self.env, name=name, uri=hv.uri, fault_domain=fault_domain,
                          network=network, pool=pool))
        return hv

    def host_of(self, domain: str) -> str | None:
        """The fake host a domain is defined on (None: nowhere)."""
        found = [uri for uri, hv in self.fakes.items() if domain in hv.domains]
        if domain in self.hv.domains:
            found.append(self.hv.uri)
        assert len(found) <= 1, f"{domain} is defined on {found}"
        return found[0].removeprefix("qemu+tcp://").removesuffix("/system") if found else None

    def env_on(self, store: Store, *, progress: Callable[[str], None]) -> Env:
        """This world's collaborators on another connection to its store, as a command of
        another process (the in-process CLI, a call of `orch serve`) has them."""
        pool = self.env.engine.settings.pool
        engine = Engine(hv=self.hv, store=store, registry=Registry(store, self.state_dir),
                        clock=self.clock, settings=self.env.engine.settings,
                        log=progress, offload=inline,
                        fleet=Fleet(store, local=self.hv, local_uri=self.hv.uri,
                                    local_pool=pool, connect=self.connect))
        return Env(engine=engine, prober=self.prober, progress=progress)

    @contextlib.contextmanager
    def opened(self, progress: Callable[[str], None]) -> Iterator[Env]:
        """Collaborators for one call of `orch serve` (``api.operations.Opener``): a store
        connection of its own (calls run on threads of their own), this world's hosts."""
        store = Store(self.store.path)
        try:
            yield self.env_on(store, progress=progress)
        finally:
            store.close()

    @property
    def service(self) -> Commands:
        return Commands(self.env)

    def register_image(self, name: str, version: str, **extra: object) -> str:
        """A registered image whose files exist (contents are not a real disk); ``extra``
        goes into its manifest (e.g. ``minMemoryMiB=512``)."""
        directory = self.state_dir / "images" / name / version
        directory.mkdir(parents=True)
        files = {"disk": "disk.qcow2", "kernel": "vmlinuz", "initrd": "initrd.img"}
        for key, fname in files.items():
            (directory / fname).write_bytes(f"{name}:{version}:{key}".encode())
            for hv in (self.hv, *self.fakes.values()):
                hv.add_external_file(str(directory / fname))
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
        """(domains, volumes in pool default but the images' copies, reservation names on
        network default)."""
        domains = {d.name for d in self.hv.list_domains()}
        volumes = {v.name for v in self.hv.list_volumes("default") if not is_copy(v.name)}
        reservations = {r.name for r in self.hv.list_reservations("default")}
        return domains, volumes, reservations


def make_world(tmp_path: Path, *, boot_seconds: float = 6.5,
               shutdown_seconds: float = 1.5, pool: str = "default",
               clock: Clock | None = None) -> World:
    """A fresh fake world in ``tmp_path`` with image tiny:1 registered. ``pool``: the one
    storage pool of the implicit host, and the configured one (the lab's is ``orchlab``,
    from ORCH_POOL). ``clock``: a ``FakeClock`` unless told (``RealClock``: guests boot and
    upgrades run in real time, for a browser watching them, tests/browser)."""
    clock = FakeClock() if clock is None else clock
    hv = FakeHypervisor(clock=clock, boot_seconds=boot_seconds,
                        shutdown_seconds=shutdown_seconds,
                        pools=[dataclasses.replace(DEFAULT_POOLS[0], name=pool)])
    store = Store(tmp_path / "orchestrator.db")
    registry = Registry(store, tmp_path)
    prober = FakeProber(hv, clock=clock)
    lines: list[str] = []
    fakes: dict[str, FakeHypervisor] = {}

    def connect(uri: str) -> FakeHypervisor:
        return World.connect(w, uri)

    engine = Engine(hv=hv, store=store, registry=registry, clock=clock,
                    settings=Settings(state_dir=tmp_path, pool=pool, domain_type="qemu"),
                    log=lines.append, offload=inline,
                    fleet=Fleet(store, local=hv, local_uri=hv.uri, local_pool=pool,
                                connect=connect))
    env = Env(engine=engine, prober=prober, progress=lines.append)
    w = World(clock, hv, store, registry, prober, env, tmp_path, lines, fakes)
    w.register_image("tiny", "1")
    return w


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
