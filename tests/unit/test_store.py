"""The store's instance rows: what is written reads back as the same record, however it is
read (one, a set, all), including after an update of the health record alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from orchestrator.records import InstanceRecord
from orchestrator.store import _INSTANCE_COLUMNS, Store


def _record(instance_id: int, **changes: object) -> InstanceRecord:
    rec = InstanceRecord(
        set_name="web", instance_id=instance_id, name=f"web-{instance_id}", status="active",
        mac=f"52:54:00:00:00:{instance_id:02x}", ip=f"10.0.0.{instance_id + 10}",
        network="default", model_generation=2, image="tiny:1", host_key_public="pub",
        host_key_private="priv", seed_instance_id=f"seed-{instance_id}",
        protect_from_scale_in=True, protect_from_scale_set_actions=False,
        power_intent="running", health={"state": "Healthy", "streak": 2, "last": None},
        created_at="2026-12-01T10:00:00Z", os_volume=f"web-{instance_id}-os1.qcow2",
        prev_os_volume=f"web-{instance_id}-os0.qcow2", prev_generation=1, prev_image="tiny:0",
        host="h2")
    return dataclasses.replace(rec, **changes)  # type: ignore[arg-type]


def test_every_field_of_an_instance_is_a_column() -> None:
    # the store fills records in from their columns alone, bypassing __init__
    assert tuple(f.name for f in dataclasses.fields(InstanceRecord)) == _INSTANCE_COLUMNS
    assert not hasattr(InstanceRecord, "__post_init__")


def test_an_instance_reads_back_as_written(tmp_path: Path) -> None:
    store = Store(tmp_path / "orchestrator.db")
    written = [_record(0), _record(1, protect_from_scale_in=False, health={}, host="local")]
    for rec in written:
        store.add_instance(rec)

    assert store.list_instances("web") == written
    assert store.all_instances() == written
    one = store.find_instance("web", 1)
    assert one == written[1] and isinstance(one.protect_from_scale_in, bool)
    assert repr(one) == repr(written[1])
    assert dataclasses.replace(one, status="deleting").status == "deleting"

    store.set_healths("web", {0: {"state": "Unhealthy"}})
    assert store.list_instances("web") == [
        dataclasses.replace(written[0], health={"state": "Unhealthy"}), written[1]]
    store.close()
