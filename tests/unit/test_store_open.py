"""Opening the store: a database with this version's schema is opened by reading only (no
write lock, nothing written), as `orch serve` opens one per request; any other database
still gets the schema and its migrations."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from orchestrator.store import SCHEMA_VERSION, Store

DEADLINE = 10.0


def made(path: Path) -> None:
    Store(path).close()


def version_of(path: Path) -> str:
    with sqlite3.connect(path) as db:
        return str(db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])


def test_an_up_to_date_store_opens_while_another_connection_writes(tmp_path: Path) -> None:
    path = tmp_path / "orchestrator.db"
    made(path)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process's write transaction, held
    listed: list[object] = []

    def open_and_read() -> None:
        store = Store(path)  # used in the thread that opened it, as sqlite3 wants
        try:
            listed.append(store.list_sets())
        finally:
            store.close()

    thread = threading.Thread(target=open_and_read, daemon=True)
    try:
        thread.start()
        thread.join(DEADLINE)  # an open that took the write lock would wait out its timeout
        assert listed == [[]], "opening waited for the write lock"
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        thread.join(DEADLINE)


def test_an_up_to_date_store_is_not_written_by_opening(tmp_path: Path) -> None:
    path = tmp_path / "orchestrator.db"
    made(path)
    with sqlite3.connect(path) as db:
        before = db.execute("PRAGMA data_version").fetchone()[0], list(db.iterdump())
        made(path)
        # data_version moves when another connection commits a change
        assert (db.execute("PRAGMA data_version").fetchone()[0], list(db.iterdump())) == before


def test_an_older_store_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "orchestrator.db"
    made(path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value='5' WHERE key='schema_version'")
    made(path)
    assert version_of(path) == str(SCHEMA_VERSION)


def test_a_store_missing_a_table_gets_it(tmp_path: Path) -> None:
    path = tmp_path / "orchestrator.db"
    made(path)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE events")
    store = Store(path)
    try:
        store.add_event("web", "made again", now="2027-01-15T08:00:00Z")
    finally:
        store.close()


def test_a_new_store_gets_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "new" / "orchestrator.db"
    made(path)
    assert version_of(path) == str(SCHEMA_VERSION)
    assert path.stat().st_mode & 0o777 == 0o600
