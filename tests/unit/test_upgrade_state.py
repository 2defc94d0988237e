"""The typed state of a rolling upgrade: its round trip through the store, and the
migration of rows an earlier version wrote (free-form detail, no batch times)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from orchestrator.engine.upgrade_state import (
    BatchRecord,
    LastAction,
    Progress,
    RollingStatus,
    RollingUpgrade,
)
from orchestrator.store import SCHEMA_VERSION, Store

# what version 3 wrote for a surge upgrade killed mid-batch
OLD_DETAIL = {"pid": 4242, "surge": True, "surgeFallback": None,
              "thresholds": ["maxBatchInstancePercent 34% of 3 instances = 1 per batch"],
              "batches": [{"batch": 1, "instances": [0], "succeeded": [3], "failed": []}],
              "inFlight": [1], "firstNewId": 4}


def _old_database(path: Path) -> None:
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO rolling_upgrades(set_name, status, last_action, "
                   "target_generation, policy, progress, detail, start_time) "
                   "VALUES (?,?,?,?,?,?,?,?)",
                   ("web", "RollingForward", "Start", 2, json.dumps({"maxSurge": True}),
                    json.dumps({"successfulInstanceCount": 1, "pendingInstanceCount": 2}),
                    json.dumps(OLD_DETAIL), "2026-11-28T10:00:00Z"))
        db.execute("UPDATE meta SET value='3' WHERE key='schema_version'")


def test_a_version_3_row_is_migrated_and_reads_as_a_typed_record(tmp_path: Path) -> None:
    path = tmp_path / "orchestrator.db"
    _old_database(path)
    store = Store(path)
    row = store.latest_rolling_upgrade("web")
    assert row is not None
    up = RollingUpgrade.from_storage(row)
    assert (up.status, up.last_action) == (RollingStatus.ROLLING_FORWARD, LastAction.START)
    assert up.surge and up.in_flight == (1,) and up.first_new_id == 4 and up.driver_pid == 4242
    assert up.batches == (BatchRecord(1, (0,), (3,), ()),)
    assert up.progress == Progress(successful=1, pending=2)
    # the row itself is in this version's form now, batch times present (unknown: None)
    assert row.detail["batches"] == [{"batch": 1, "instances": [0], "succeeded": [3],
                                      "failed": [], "started": None, "ended": None}]
    assert row.detail["inFlightStarted"] is None and row.detail["cancel"] is None
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
            str(SCHEMA_VERSION),)
    store.close()


def test_a_record_survives_the_store_unchanged(tmp_path: Path) -> None:
    store = Store(tmp_path / "orchestrator.db")
    row = store.add_rolling_upgrade("web", target_generation=3, policy={"maxSurge": False},
                                    progress={}, now="2026-12-01T00:00:00Z")
    up = RollingUpgrade.from_storage(row).with_(
        status=RollingStatus.FAULTED, error="2 of 3 upgraded instances are unhealthy",
        progress=Progress(1, 2, 0, 0), thresholds=("a", "b"),
        batches=(BatchRecord(1, (0, 1), (0,), (1,), 1800000000.25, 1800000007.5),),
        rollback_note="rolled back", end_time="2026-12-01T00:01:00Z", driver_pid=7)
    store.update_rolling_upgrade(row, **up.for_storage())
    again = RollingUpgrade.from_storage(store.get_rolling_upgrade(row.id))
    assert again == up
    store.close()
