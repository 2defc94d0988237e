"""A command's session on one scale set, and the collaborators every use case is handed.

Owned here: ``Env`` (hypervisor, store, registry, clock and settings through the engine,
the prober, the progress printer: wired once by the CLI, or by a test with fakes; the
console tails of the command's failed instances),
``Session`` (what one command holds while it acts on a set: the set's lock, its operation
in the journal, the set's spec, its admin key and the images it verified, each loaded
once), ``open_session`` and ``lock_is_free``.

The lock is the witness of a live writer: the kernel frees it the moment its holder dies
(also while the dead process lingers as a zombie), so an operation still marked
``running`` whose set lock is free was left by a killed process. No pid is trusted.

Called by: api.operations, api.routes, cli.app, cli.serve, dryrun.plan, dryrun.simworld,
usecases.bootdiag, usecases.controller, usecases.hosts, usecases.images,
usecases.osupgrades, usecases.placement, usecases.recovery, usecases.removal,
usecases.repairs, usecases.rolling, usecases.rollout, usecases.sets, usecases.updates,
usecases.views, usecases.watch
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import locks, ssh
from orchestrator.clock import Clock
from orchestrator.engine.context import Engine, one_line
from orchestrator.engine.health import Prober
from orchestrator.errors import InvalidInput, NotFound
from orchestrator.hypervisor.base import Hypervisor
from orchestrator.images import Image, Registry
from orchestrator.model import LATEST, Model, ScaleSetSpec, validate
from orchestrator.store import InstanceRecord, SetRecord, Store

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Env:
    """The collaborators of every use case."""

    engine: Engine
    prober: Prober
    progress: Progress = field(default=lambda line: None)
    # the console lines, as an error shows them, of the instances this command's health
    # waits left not Healthy, by name (``usecases.bootdiag``); emptied by each command
    console_tails: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def store(self) -> Store:
        return self.engine.store

    @property
    def hv(self) -> Hypervisor:
        return self.engine.hv

    @property
    def registry(self) -> Registry:
        return self.engine.registry

    @property
    def clock(self) -> Clock:
        return self.engine.clock

    @property
    def state_dir(self) -> Path:
        return self.engine.settings.state_dir

    def lock_path(self, set_name: str) -> Path:
        return self.state_dir / "locks" / f"{set_name}.lock"

    def key_path(self, set_name: str) -> Path:
        return self.state_dir / "sets" / set_name / "id_ed25519"

    def admin_key(self, set_name: str) -> ssh.KeyPair:
        path = self.key_path(set_name)
        private = ssh.read_private_key(path)
        public = path.with_name(path.name + ".pub").read_text().strip()
        return ssh.KeyPair(private_openssh=private, public_openssh=public)

    def spec_of(self, set_name: str) -> ScaleSetSpec:
        return validate(ScaleSetSpec, self.store.get_set(set_name).spec)

    def instances(self, set_name: str, ids: list[int] | None) -> list[InstanceRecord]:
        """The instances named (all with ``ids`` None); NotFound names the missing ones."""
        everything = self.store.list_instances(set_name)
        if ids is None:
            return everything
        by_id = {i.instance_id: i for i in everything}
        missing = [str(i) for i in ids if i not in by_id]
        if missing:
            raise NotFound(f"scale set {set_name} has no instance {', '.join(missing)}")
        return [by_id[i] for i in dict.fromkeys(ids)]


@dataclass
class Session:
    """One command's hold on one set. Handed to every step the command takes."""

    env: Env
    set_name: str
    kind: str
    operation_id: int
    _spec: ScaleSetSpec | None = None
    _images: dict[str, Image] = field(default_factory=dict)
    _models: dict[int, Model] = field(default_factory=dict)
    _key: ssh.KeyPair | None = None

    @property
    def engine(self) -> Engine:
        return self.env.engine

    @property
    def store(self) -> Store:
        return self.env.store

    def progress(self, line: str) -> None:
        self.env.progress(line)

    @property
    def record(self) -> SetRecord:
        return self.store.get_set(self.set_name)

    @property
    def spec(self) -> ScaleSetSpec:
        if self._spec is None:
            self._spec = validate(ScaleSetSpec, self.record.spec)
        return self._spec

    def changed_spec(self) -> None:
        """The set's spec was written: read it again when next asked."""
        self._spec = None

    async def image(self, ref: str) -> Image:
        """The registered image ``ref``, its files verified once in this session (hashing
        a large image happens off the event loop)."""
        if ref not in self._images:
            image = self.env.registry.get(ref, skip=self.failed_versions())
            await self.engine.offload(lambda: self.env.registry.check_files(image))
            self._images[ref] = image
        return self._images[ref]

    def shown(self, ref: str) -> str:
        """``ref`` for a progress line: ``NAME:latest`` with the version it stands for in
        this session, once looked up."""
        image = self._images.get(ref)
        return f"{ref} = {image.ref}" if image is not None and image.ref != ref else ref

    def resolve_again(self) -> None:
        """``NAME:latest`` is looked up again when next asked (a version just failed)."""
        self._images = {ref: image for ref, image in self._images.items()
                        if not ref.endswith(f":{LATEST}")}

    def failed_versions(self) -> frozenset[str]:
        """Image versions an automatic OS upgrade of the set failed on: ``NAME:latest``
        passes over them (docs/semantics.md#automatic-os-upgrades)."""
        return frozenset(u.target for u in self.store.os_upgrades(self.set_name)
                         if u.result in ("Faulted", "RolledBack"))

    def model(self, generation: int) -> Model:
        if generation not in self._models:
            self._models[generation] = validate(
                Model, self.store.model_of_generation(self.set_name, generation))
        return self._models[generation]

    @property
    def key(self) -> ssh.KeyPair:
        """The set's admin key pair, made on first use."""
        if self._key is None:
            path = self.env.key_path(self.set_name)
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.chmod(path.parent, 0o700)
                ssh.write_private_key(path, ssh.generate_keypair(f"orchestrator {self.set_name}"))
            self._key = self.env.admin_key(self.set_name)
        return self._key

    def instances(self, ids: list[int] | None = None) -> list[InstanceRecord]:
        return self.env.instances(self.set_name, ids)


@contextlib.asynccontextmanager
async def open_session(env: Env, set_name: str, kind: str) -> AsyncIterator[Session]:
    """Take the set's lock (Conflict, exit 3, naming the holder if another process has it)
    and journal the command as an operation (``journal``). The image copies an earlier
    command of this process found are looked for again (one may have been deleted by hand
    since)."""
    with locks.hold(env.lock_path(set_name), what=f"scale set {set_name}", purpose=kind):
        if env.engine.operation_id is None:
            env.engine.copies.forget()
            env.console_tails.clear()  # an earlier command's failures are not this one's
        with journal(env, set_name, kind) as entry:
            yield Session(env=env, set_name=set_name, kind=kind, operation_id=entry.id)


def _forgotten(store: Store, op_id: int) -> bool:
    """Bad input refused before any step leaves the journal as it was."""
    with contextlib.suppress(Exception):  # a dead store must not hide the cause
        return store.forget_operation(op_id)
    return False


@dataclass
class Entry:
    """An operation of the journal being written: its id, and the detail it ends with
    (an ``error`` in it ends the operation ``failed``)."""

    id: int
    detail: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def journal(env: Env, set_name: str, kind: str) -> Iterator[Entry]:
    """One operation of the journal around a block, run by whoever holds the set's lock:
    ``running`` while it lasts, then ``succeeded``, or ``failed`` with its error; the steps
    taken meanwhile belong to it. The controller journals each round of repairs this way
    inside its pass's session."""
    store, engine = env.store, env.engine
    entry = Entry(store.start_operation(set_name, kind, {}, now=engine.now()))
    outer, engine.operation_id = engine.operation_id, entry.id
    try:
        yield entry
    except BaseException as exc:
        if not (isinstance(exc, InvalidInput) and _forgotten(store, entry.id)):
            with contextlib.suppress(Exception):  # a dead store must not hide the cause
                store.end_operation(entry.id, "failed",
                                    {**entry.detail, "error": one_line(exc)}, now=engine.now())
        raise
    finally:
        engine.operation_id = outer
    store.end_operation(entry.id, "failed" if "error" in entry.detail else "succeeded",
                        entry.detail, now=engine.now())


def lock_is_free(env: Env, set_name: str) -> bool:
    """Whether no process holds the set's lock now (this process's own hold counts as
    held). Read-only: a missing lock file is free and is not created."""
    path = env.lock_path(set_name)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
