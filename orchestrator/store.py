"""Durable state in SQLite (stdlib sqlite3, WAL): images and their copies on hosts, scale
sets, model generations, instances, hosts, operations and events.

Owned here: the schema, its migrations, and typed rows (``ImageRecord``, ``SetRecord``,
``InstanceRecord``, ``OperationRecord``). Each public method is one transaction;
``transaction()`` groups several. The database file is created 0600: it holds instances' SSH
host private keys.
Called by: cli.app, dryrun.plan, dryrun.simworld, engine.addresses, engine.context,
engine.copies, engine.hosts, engine.steps, engine.upgrade_state, images, metrics,
usecases.bootdiag, usecases.hosts, usecases.recovery, usecases.removal, usecases.rolling, usecases.rollout,
usecases.session, usecases.sets, usecases.views, usecases.watch
``cli.app`` opens it; the others read and write records through it (``metrics`` and ``dryrun.plan``
only read the real one; the dry run writes to a copy).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from orchestrator.errors import Conflict, EnvironmentProblem, NotFound
from orchestrator.records import (
    HostRecord,
    ImageCopyRecord,
    ImageRecord,
    InstanceRecord,
    OperationRecord,
    OsUpgradeRecord,
    RollingUpgradeRecord,
    ServiceRecord,
    SetRecord,
    StepRecord,
)

__all__ = ["HostRecord", "ImageCopyRecord", "ImageRecord", "InstanceRecord", "OperationRecord",
           "OsUpgradeRecord", "RollingUpgradeRecord", "ServiceRecord", "SetRecord", "StepRecord", "Store"]

SCHEMA_VERSION = 6

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    name TEXT NOT NULL, version TEXT NOT NULL, sha256 TEXT NOT NULL, path TEXT NOT NULL,
    manifest TEXT NOT NULL, created_at TEXT NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS scale_sets (
    name TEXT PRIMARY KEY, spec TEXT NOT NULL, generation INTEGER NOT NULL,
    next_instance_id INTEGER NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS generations (
    set_name TEXT NOT NULL, generation INTEGER NOT NULL, model TEXT NOT NULL,
    created_at TEXT NOT NULL, PRIMARY KEY (set_name, generation));
CREATE TABLE IF NOT EXISTS instances (
    set_name TEXT NOT NULL, instance_id INTEGER NOT NULL, name TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL, mac TEXT NOT NULL, ip TEXT NOT NULL, network TEXT NOT NULL,
    model_generation INTEGER NOT NULL, image TEXT NOT NULL,
    host_key_public TEXT NOT NULL, host_key_private TEXT NOT NULL, seed_instance_id TEXT NOT NULL,
    protect_from_scale_in INTEGER NOT NULL DEFAULT 0,
    protect_from_scale_set_actions INTEGER NOT NULL DEFAULT 0,
    power_intent TEXT NOT NULL DEFAULT 'running',
    health TEXT NOT NULL DEFAULT '{}', created_at TEXT NOT NULL,
    os_volume TEXT NOT NULL DEFAULT '', prev_os_volume TEXT NOT NULL DEFAULT '',
    prev_generation INTEGER NOT NULL DEFAULT 0, prev_image TEXT NOT NULL DEFAULT '',
    host TEXT NOT NULL DEFAULT 'local',
    PRIMARY KEY (set_name, instance_id));
CREATE TABLE IF NOT EXISTS hosts (
    name TEXT PRIMARY KEY, uri TEXT NOT NULL, fault_domain TEXT NOT NULL, network TEXT NOT NULL,
    pool TEXT NOT NULL, state TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS image_copies (
    host TEXT NOT NULL, sha256 TEXT NOT NULL, volume TEXT NOT NULL, path TEXT NOT NULL,
    created_at TEXT NOT NULL, PRIMARY KEY (host, sha256));
CREATE TABLE IF NOT EXISTS services (
    set_name TEXT NOT NULL, service TEXT NOT NULL, state TEXT NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0, updated_at TEXT NOT NULL,
    PRIMARY KEY (set_name, service));
CREATE TABLE IF NOT EXISTS os_upgrades (
    id INTEGER PRIMARY KEY AUTOINCREMENT, set_name TEXT NOT NULL, from_versions TEXT NOT NULL,
    target TEXT NOT NULL, generation INTEGER NOT NULL, start_time TEXT NOT NULL,
    end_time TEXT, result TEXT NOT NULL, rollback TEXT NOT NULL DEFAULT '{}', error TEXT);
CREATE TABLE IF NOT EXISTS operations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, set_name TEXT NOT NULL, kind TEXT NOT NULL,
    status TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '{}', pid INTEGER,
    started_at TEXT NOT NULL, ended_at TEXT);
CREATE TABLE IF NOT EXISTS rolling_upgrades (
    id INTEGER PRIMARY KEY AUTOINCREMENT, set_name TEXT NOT NULL, status TEXT NOT NULL,
    last_action TEXT NOT NULL, target_generation INTEGER NOT NULL, policy TEXT NOT NULL,
    progress TEXT NOT NULL, error TEXT, detail TEXT NOT NULL DEFAULT '{}',
    start_time TEXT NOT NULL, end_time TEXT);
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT, operation_id INTEGER NOT NULL, set_name TEXT NOT NULL,
    instance TEXT NOT NULL, step TEXT NOT NULL, status TEXT NOT NULL, error TEXT,
    started_at TEXT NOT NULL, ended_at TEXT);
CREATE INDEX IF NOT EXISTS steps_of_operation ON steps(operation_id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, set_name TEXT NOT NULL, instance_id INTEGER,
    at TEXT NOT NULL, message TEXT NOT NULL);
"""


# the tables and indexes _SCHEMA makes
_SCHEMA_OBJECTS = tuple(re.findall(r"CREATE (?:TABLE|INDEX) IF NOT EXISTS (\w+)", _SCHEMA))

_ADDED_INSTANCE_COLUMNS = (
    ("os_volume", "TEXT NOT NULL DEFAULT ''"),
    ("prev_os_volume", "TEXT NOT NULL DEFAULT ''"),
    ("prev_generation", "INTEGER NOT NULL DEFAULT 0"),
    ("prev_image", "TEXT NOT NULL DEFAULT ''"),
    ("host", "TEXT NOT NULL DEFAULT 'local'"),
)


_INSTANCE_COLUMNS = (
    "set_name", "instance_id", "name", "status", "mac", "ip", "network", "model_generation",
    "image", "host_key_public", "host_key_private", "seed_instance_id", "protect_from_scale_in",
    "protect_from_scale_set_actions", "power_intent", "health", "created_at", "os_volume",
    "prev_os_volume", "prev_generation", "prev_image", "host",
)  # fmt: skip


_INSTANCE_SELECT = f"SELECT {', '.join(_INSTANCE_COLUMNS)} FROM instances"


def _instance_values(rec: InstanceRecord) -> tuple[Any, ...]:
    values = []
    for column in _INSTANCE_COLUMNS:
        value = getattr(rec, column)
        if isinstance(value, bool):
            value = int(value)
        elif isinstance(value, dict):
            value = json.dumps(value)
        values.append(value)
    return tuple(values)


class Store:
    def __init__(self, path: Path, *, durable: bool = True) -> None:
        """``durable`` false: no fsync per transaction (a dry run's throwaway copy)."""
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
                os.close(fd)
            self._db = sqlite3.connect(path, timeout=30, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise EnvironmentProblem(
                f"cannot open state database {path}: {exc}", hint="check --state-dir"
            ) from exc
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=OFF")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._depth = 0
        if self._up_to_date():
            return
        with self.transaction():
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    self._db.execute(stmt)
            self._migrate()

    def _up_to_date(self) -> bool:
        """Whether the database has this version's schema already, found by reading only.
        The usual case, and then opening takes no write lock and writes nothing: `orch serve`
        opens a connection per request, and concurrent opens that each took the write lock
        (and synced a commit) queued behind each other."""
        try:
            row = self._one("SELECT value FROM meta WHERE key='schema_version'", ())
            if row is None or row["value"] != str(SCHEMA_VERSION):
                return False
            present = {r["name"] for r in self._db.execute("SELECT name FROM sqlite_master")}
            columns = {r["name"] for r in self._db.execute("PRAGMA table_info(instances)")}
        except sqlite3.OperationalError:  # no meta table: a new database
            return False
        return (set(_SCHEMA_OBJECTS) <= present
                and {column for column, _ in _ADDED_INSTANCE_COLUMNS} <= columns)

    def _migrate(self) -> None:
        """Bring a database made by an older version up to ``SCHEMA_VERSION``."""
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(instances)")}
        for column, decl in _ADDED_INSTANCE_COLUMNS:
            if column not in columns:
                self._db.execute(f"ALTER TABLE instances ADD COLUMN {column} {decl}")
        # version 1 named every OS disk <name>-os.qcow2
        self._db.execute("UPDATE instances SET os_volume = name || '-os.qcow2' WHERE os_volume = ''")
        row = self._one("SELECT value FROM meta WHERE key='schema_version'", ())
        if row is not None and int(row["value"]) < 4:
            # version 4 types a rolling upgrade's detail (engine.upgrade_state)
            from orchestrator.engine.upgrade_state import migrate_detail

            for old in [_rolling(r) for r in self._db.execute("SELECT * FROM rolling_upgrades")]:
                self._db.execute("UPDATE rolling_upgrades SET detail=? WHERE id=?",
                                 (json.dumps(migrate_detail(old)), old.id))
        self._db.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )

    def close(self) -> None:
        self._db.close()

    def backup_to(self, path: Path) -> None:
        """Copy the whole database into a new file ``path`` (0600; it must not exist) with
        sqlite3's backup API: a consistent snapshot taken under a read lock, this database
        only read. Called by ``dryrun.plan``, which simulates an update on the copy."""
        try:
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
            os.close(fd)
            target = sqlite3.connect(path)
            try:
                self._db.backup(target)
            finally:
                target.close()
        except (OSError, sqlite3.Error) as exc:
            raise EnvironmentProblem(f"cannot copy state database to {path}: {exc}") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group statements; nested uses join the outer transaction."""
        if self._depth == 0:
            self._db.execute("BEGIN IMMEDIATE")
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                self._db.execute("ROLLBACK")
            raise
        self._depth -= 1
        if self._depth == 0:
            self._db.execute("COMMIT")

    def _one(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()
        return row

    # --- images ------------------------------------------------------------------------
    def add_image(self, rec: ImageRecord) -> None:
        with self.transaction():
            if self.find_image(rec.name, rec.version) is not None:
                raise Conflict(f"image {rec.ref} is already registered")
            self._db.execute(
                "INSERT INTO images VALUES (?,?,?,?,?,?)",
                (rec.name, rec.version, rec.sha256, rec.path, json.dumps(rec.manifest),
                 rec.created_at),
            )

    def find_image(self, name: str, version: str) -> ImageRecord | None:
        row = self._one("SELECT * FROM images WHERE name=? AND version=?", (name, version))
        return _image(row) if row else None

    def list_images(self) -> list[ImageRecord]:
        rows = self._db.execute("SELECT * FROM images ORDER BY name, version").fetchall()
        return [_image(r) for r in rows]

    def delete_image(self, name: str, version: str) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM images WHERE name=? AND version=?", (name, version))

    # --- scale sets --------------------------------------------------------------------
    def add_set(self, name: str, spec: dict[str, Any], *, now: str) -> SetRecord:
        with self.transaction():
            if self.find_set(name) is not None:
                raise Conflict(f"scale set {name} already exists")
            self._db.execute(
                "INSERT INTO scale_sets VALUES (?,?,?,?,?,?)",
                (name, json.dumps(spec), 1, 0, now, now),
            )
            self._db.execute(
                "INSERT INTO generations VALUES (?,?,?,?)",
                (name, 1, json.dumps(spec["model"]), now),
            )
        return self.get_set(name)

    def find_set(self, name: str) -> SetRecord | None:
        row = self._one("SELECT * FROM scale_sets WHERE name=?", (name,))
        return _set(row) if row else None

    def get_set(self, name: str) -> SetRecord:
        rec = self.find_set(name)
        if rec is None:
            raise NotFound(f"scale set {name} not found")
        return rec

    def list_sets(self) -> list[SetRecord]:
        return [_set(r) for r in self._db.execute("SELECT * FROM scale_sets ORDER BY name")]

    def update_spec(self, name: str, spec: dict[str, Any], *, new_generation: bool, now: str) -> SetRecord:
        """Store a changed spec; a model change gets the next generation number."""
        with self.transaction():
            cur = self.get_set(name)
            gen = cur.generation + 1 if new_generation else cur.generation
            self._db.execute(
                "UPDATE scale_sets SET spec=?, generation=?, updated_at=? WHERE name=?",
                (json.dumps(spec), gen, now, name),
            )
            if new_generation:
                self._db.execute(
                    "INSERT INTO generations VALUES (?,?,?,?)",
                    (name, gen, json.dumps(spec["model"]), now),
                )
        return self.get_set(name)

    def model_of_generation(self, name: str, generation: int) -> dict[str, Any]:
        row = self._one(
            "SELECT model FROM generations WHERE set_name=? AND generation=?", (name, generation)
        )
        if row is None:
            raise NotFound(f"scale set {name} has no generation {generation}")
        model: dict[str, Any] = json.loads(row["model"])
        return model

    def take_instance_ids(self, name: str, count: int) -> list[int]:
        """Reserve ``count`` new instanceIds; ids are never reused within a set."""
        with self.transaction():
            cur = self.get_set(name)
            first = cur.next_instance_id
            self._db.execute(
                "UPDATE scale_sets SET next_instance_id=? WHERE name=?", (first + count, name)
            )
        return list(range(first, first + count))

    def delete_set(self, name: str) -> None:
        with self.transaction():
            for table, col in (("instances", "set_name"), ("generations", "set_name"),
                               ("rolling_upgrades", "set_name"), ("services", "set_name"),
                               ("os_upgrades", "set_name"),
                               ("events", "set_name"), ("scale_sets", "name")):
                self._db.execute(f"DELETE FROM {table} WHERE {col}=?", (name,))

    # --- instances ---------------------------------------------------------------------
    def add_instance(self, rec: InstanceRecord) -> None:
        with self.transaction():
            self._db.execute(
                f"INSERT INTO instances ({', '.join(_INSTANCE_COLUMNS)})"
                f" VALUES ({', '.join('?' * len(_INSTANCE_COLUMNS))})",
                _instance_values(rec),
            )

    def update_instance(self, rec: InstanceRecord, **changes: Any) -> InstanceRecord:
        new = replace(rec, **changes)
        with self.transaction():
            self._db.execute(
                f"UPDATE instances SET {', '.join(c + '=?' for c in _INSTANCE_COLUMNS[2:])}"
                " WHERE set_name=? AND instance_id=?",
                _instance_values(new)[2:] + (new.set_name, new.instance_id),
            )
        return new

    def set_health(self, set_name: str, instance_id: int, health: dict[str, Any]) -> None:
        """Only an instance's health record (probes write it often; nothing else changes)."""
        with self.transaction():
            self._db.execute("UPDATE instances SET health=? WHERE set_name=? AND instance_id=?",
                             (json.dumps(health), set_name, instance_id))

    def set_healths(self, set_name: str, healths: Mapping[int, dict[str, Any]]) -> None:
        """The health records of several instances (a probe round), in one statement."""
        with self.transaction():
            self._db.executemany(
                "UPDATE instances SET health=? WHERE set_name=? AND instance_id=?",
                [(json.dumps(health), set_name, instance_id)
                 for instance_id, health in healths.items()])

    def find_instance(self, set_name: str, instance_id: int) -> InstanceRecord | None:
        row = self._one(
            f"{_INSTANCE_SELECT} WHERE set_name=? AND instance_id=?", (set_name, instance_id)
        )
        return _instance(row) if row else None

    def list_instances(self, set_name: str) -> list[InstanceRecord]:
        rows = self._db.execute(
            f"{_INSTANCE_SELECT} WHERE set_name=? ORDER BY instance_id", (set_name,)
        )
        return [_instance(r) for r in rows]

    def all_instances(self) -> list[InstanceRecord]:
        rows = self._db.execute(f"{_INSTANCE_SELECT} ORDER BY set_name, instance_id")
        return [_instance(r) for r in rows]

    def delete_instance(self, set_name: str, instance_id: int) -> None:
        with self.transaction():
            self._db.execute(
                "DELETE FROM instances WHERE set_name=? AND instance_id=?", (set_name, instance_id)
            )

    # --- hosts -------------------------------------------------------------------------------
    def add_host(self, rec: HostRecord) -> None:
        with self.transaction():
            if self.find_host(rec.name) is not None:
                raise Conflict(f"host {rec.name} already exists")
            self._db.execute(
                "INSERT INTO hosts(name, uri, fault_domain, network, pool, state, created_at)"
                " VALUES (?,?,?,?,?,?,?)", (rec.name, rec.uri, rec.fault_domain, rec.network,
                                            rec.pool, rec.state, rec.created_at))

    def find_host(self, name: str) -> HostRecord | None:
        row = self._one("SELECT * FROM hosts WHERE name=?", (name,))
        return HostRecord(**dict(row)) if row else None

    def get_host(self, name: str) -> HostRecord:
        rec = self.find_host(name)
        if rec is None:
            raise NotFound(f"host {name} is not registered (see `orch host list`)")
        return rec

    def list_hosts(self) -> list[HostRecord]:
        return [HostRecord(**dict(r)) for r in self._db.execute("SELECT * FROM hosts ORDER BY name")]

    def set_host_state(self, name: str, state: str) -> HostRecord:
        with self.transaction():
            self._db.execute("UPDATE hosts SET state=? WHERE name=?", (state, name))
        return self.get_host(name)

    def hosts_in_use(self) -> dict[str, int]:
        """Host name -> how many instances (of every set) live there."""
        return {r["host"]: r["n"] for r in self._db.execute(
            "SELECT host, COUNT(*) AS n FROM instances GROUP BY host")}

    def delete_host(self, name: str) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM hosts WHERE name=?", (name,))

    # --- orchestration services ------------------------------------------------------------
    def service(self, set_name: str, service: str) -> ServiceRecord | None:
        row = self._one("SELECT * FROM services WHERE set_name=? AND service=?",
                        (set_name, service))
        return ServiceRecord(**dict(row)) if row else None

    def put_service(self, rec: ServiceRecord) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO services(set_name, service, state, failures, updated_at)"
                " VALUES (?,?,?,?,?)", (rec.set_name, rec.service, rec.state, rec.failures,
                                        rec.updated_at))

    # --- automatic OS upgrades --------------------------------------------------------------
    def add_os_upgrade(self, set_name: str, *, from_versions: list[str], target: str,
                       generation: int, now: str) -> OsUpgradeRecord:
        with self.transaction():
            cur = self._db.execute(
                "INSERT INTO os_upgrades(set_name, from_versions, target, generation, start_time,"
                " result) VALUES (?,?,?,?,?,?)", (set_name, json.dumps(from_versions), target,
                                                  generation, now, "Running"))
        return next(u for u in self.os_upgrades(set_name) if u.id == cur.lastrowid)

    def end_os_upgrade(self, upgrade_id: int, *, result: str, rollback: dict[str, Any],
                       error: str | None, now: str) -> None:
        with self.transaction():
            self._db.execute(
                "UPDATE os_upgrades SET result=?, rollback=?, error=?, end_time=? WHERE id=?",
                (result, json.dumps(rollback), error, now, upgrade_id))

    def os_upgrades(self, set_name: str) -> list[OsUpgradeRecord]:
        """The set's automatic OS upgrade runs, oldest first."""
        return [OsUpgradeRecord(
            id=r["id"], set_name=r["set_name"], from_versions=json.loads(r["from_versions"]),
            target=r["target"], generation=r["generation"], start_time=r["start_time"],
            end_time=r["end_time"],
            result=r["result"], rollback=json.loads(r["rollback"]), error=r["error"])
            for r in self._db.execute("SELECT * FROM os_upgrades WHERE set_name=? ORDER BY id",
                                      (set_name,))]

    # --- copies of images on hosts ---------------------------------------------------------
    def put_image_copy(self, rec: ImageCopyRecord) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO image_copies(host, sha256, volume, path, created_at)"
                " VALUES (?,?,?,?,?)", (rec.host, rec.sha256, rec.volume, rec.path,
                                        rec.created_at))

    def image_copies(self, host: str | None = None) -> list[ImageCopyRecord]:
        """The verified copies on ``host`` (None: on every host)."""
        rows = self._db.execute(
            "SELECT * FROM image_copies WHERE ?1 IS NULL OR host=?1 ORDER BY host, volume", (host,))
        return [ImageCopyRecord(**dict(r)) for r in rows]

    def find_image_copy(self, host: str, sha256: str) -> ImageCopyRecord | None:
        row = self._one("SELECT * FROM image_copies WHERE host=? AND sha256=?", (host, sha256))
        return ImageCopyRecord(**dict(row)) if row else None

    def forget_image_copy(self, host: str, sha256: str) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM image_copies WHERE host=? AND sha256=?", (host, sha256))

    # --- rolling upgrades ------------------------------------------------------------------
    def add_rolling_upgrade(self, set_name: str, *, target_generation: int,
                            policy: dict[str, Any], progress: dict[str, int],
                            now: str) -> RollingUpgradeRecord:
        with self.transaction():
            cur = self._db.execute(
                "INSERT INTO rolling_upgrades(set_name, status, last_action, target_generation,"
                " policy, progress, detail, start_time) VALUES (?,?,?,?,?,?,?,?)",
                (set_name, "RollingForward", "Start", target_generation, json.dumps(policy),
                 json.dumps(progress), "{}", now),
            )
        assert cur.lastrowid is not None
        return self.get_rolling_upgrade(cur.lastrowid)

    def get_rolling_upgrade(self, upgrade_id: int) -> RollingUpgradeRecord:
        row = self._one("SELECT * FROM rolling_upgrades WHERE id=?", (upgrade_id,))
        if row is None:
            raise NotFound(f"rolling upgrade {upgrade_id} not found")
        return _rolling(row)

    def latest_rolling_upgrade(self, set_name: str) -> RollingUpgradeRecord | None:
        row = self._one(
            "SELECT * FROM rolling_upgrades WHERE set_name=? ORDER BY id DESC LIMIT 1", (set_name,)
        )
        return _rolling(row) if row else None

    def update_rolling_upgrade(self, rec: RollingUpgradeRecord, **changes: Any) -> RollingUpgradeRecord:
        new = replace(rec, **changes)
        with self.transaction():
            self._db.execute(
                "UPDATE rolling_upgrades SET status=?, last_action=?, progress=?, error=?,"
                " detail=?, end_time=? WHERE id=?",
                (new.status, new.last_action, json.dumps(new.progress), new.error,
                 json.dumps(new.detail), new.end_time, new.id),
            )
        return new

    def request_cancel(self, upgrade_id: int) -> None:
        """Only the flag: the process running the upgrade acts on it between batches."""
        with self.transaction():
            self._db.execute(
                "UPDATE rolling_upgrades SET last_action='Cancel' WHERE id=?", (upgrade_id,)
            )

    # --- operations and events ---------------------------------------------------------
    def start_operation(self, set_name: str, kind: str, detail: dict[str, Any], *, now: str) -> int:
        with self.transaction():
            cur = self._db.execute(
                "INSERT INTO operations(set_name, kind, status, detail, pid, started_at)"
                " VALUES (?,?,?,?,?,?)",
                (set_name, kind, "running", json.dumps(detail), os.getpid(), now),
            )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def end_operation(self, op_id: int, status: str, detail: dict[str, Any], *, now: str) -> None:
        with self.transaction():
            self._db.execute(
                "UPDATE operations SET status=?, detail=?, ended_at=? WHERE id=?",
                (status, json.dumps(detail), now, op_id),
            )

    def forget_operation(self, op_id: int) -> bool:
        """Remove an operation that turned out to be bad input before it took any step:
        bad input leaves the journal as it was. False (kept) if it took steps."""
        with self.transaction():
            cur = self._db.execute(
                "DELETE FROM operations WHERE id=? AND NOT EXISTS "
                "(SELECT 1 FROM steps WHERE operation_id=?)", (op_id, op_id))
        return cur.rowcount == 1

    def list_operations(self, set_name: str | None = None) -> list[OperationRecord]:
        if set_name is None:
            rows = self._db.execute("SELECT * FROM operations ORDER BY id")
        else:
            rows = self._db.execute(
                "SELECT * FROM operations WHERE set_name=? ORDER BY id", (set_name,)
            )
        return [_operation(r) for r in rows]

    def start_step(self, operation_id: int, *, set_name: str, instance: str, step: str,
                   now: str) -> int:
        with self.transaction():
            cur = self._db.execute(
                "INSERT INTO steps(operation_id, set_name, instance, step, status, started_at)"
                " VALUES (?,?,?,?,?,?)",
                (operation_id, set_name, instance, step, "started", now),
            )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def end_step(self, step_id: int, status: str, *, error: str | None = None, now: str) -> None:
        with self.transaction():
            self._db.execute("UPDATE steps SET status=?, error=?, ended_at=? WHERE id=?",
                             (status, error, now, step_id))

    def list_steps(self, operation_id: int) -> list[StepRecord]:
        rows = self._db.execute("SELECT * FROM steps WHERE operation_id=? ORDER BY id",
                                (operation_id,))
        return [StepRecord(**dict(r)) for r in rows]

    def interrupt_steps(self, operation_id: int, *, now: str) -> list[StepRecord]:
        """Mark the steps of a dead operation that never ended; returns them as they were."""
        with self.transaction():
            open_steps = [s for s in self.list_steps(operation_id) if s.status == "started"]
            self._db.execute("UPDATE steps SET status='interrupted', ended_at=? "
                             "WHERE operation_id=? AND status='started'", (now, operation_id))
        return open_steps

    def add_event(self, set_name: str, message: str, *, now: str, instance_id: int | None = None) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT INTO events(set_name, instance_id, at, message) VALUES (?,?,?,?)",
                (set_name, instance_id, now, message),
            )

    def list_events(self, set_name: str) -> list[tuple[str, int | None, str]]:
        rows = self._db.execute(
            "SELECT at, instance_id, message FROM events WHERE set_name=? ORDER BY id", (set_name,)
        )
        return [(r["at"], r["instance_id"], r["message"]) for r in rows]


def _image(row: sqlite3.Row) -> ImageRecord:
    return ImageRecord(row["name"], row["version"], row["sha256"], row["path"],
                       json.loads(row["manifest"]), row["created_at"])


def _set(row: sqlite3.Row) -> SetRecord:
    return SetRecord(row["name"], json.loads(row["spec"]), row["generation"],
                     row["next_instance_id"], row["created_at"], row["updated_at"])


def _instance(row: sqlite3.Row) -> InstanceRecord:
    """A row of ``_INSTANCE_SELECT`` as the ``InstanceRecord`` its values make.

    A set's instances are read whole several times per batch of a rolling upgrade, so this
    is made cheap: the columns are paired with their names by position (not looked up by
    name in the ``sqlite3.Row``), and the record is filled in directly instead of through
    the frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field): 1000 rows
    took about 9.5 ms, now about 6. Every field is a column and the record has no
    ``__post_init__`` to skip (tests/unit/test_store.py holds both)."""
    values: dict[str, Any] = dict(zip(_INSTANCE_COLUMNS, row, strict=True))
    values["protect_from_scale_in"] = bool(values["protect_from_scale_in"])
    values["protect_from_scale_set_actions"] = bool(values["protect_from_scale_set_actions"])
    values["health"] = json.loads(values["health"])
    rec = object.__new__(InstanceRecord)
    rec.__dict__.update(values)
    return rec


def _rolling(row: sqlite3.Row) -> RollingUpgradeRecord:
    return RollingUpgradeRecord(
        id=row["id"], set_name=row["set_name"], status=row["status"],
        last_action=row["last_action"], target_generation=row["target_generation"],
        policy=json.loads(row["policy"]), progress=json.loads(row["progress"]),
        error=row["error"], detail=json.loads(row["detail"]), start_time=row["start_time"],
        end_time=row["end_time"],
    )


def _operation(row: sqlite3.Row) -> OperationRecord:
    return OperationRecord(row["id"], row["set_name"], row["kind"], row["status"],
                           json.loads(row["detail"]), row["pid"], row["started_at"],
                           row["ended_at"])
