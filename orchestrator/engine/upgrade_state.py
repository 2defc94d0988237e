"""The persisted state of a rolling upgrade, as a typed record.

Owned here: ``RollingUpgrade`` (frozen) with its enum statuses (``RollingStatus``,
``LastAction``), its batches (``BatchRecord``, with the wall-clock times each started and
ended), its progress counts, and the conversion to and from the store's row
(``from_storage``/``for_storage``). Rows written by earlier versions (no batch times, free
keys) are read as well; the store rewrites them in this form when it migrates.

Called by: cli.render, dryrun.plan, store, usecases.osupgrades, usecases.rolling
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any

from orchestrator.store import RollingUpgradeRecord


class RollingStatus(str, enum.Enum):
    ROLLING_FORWARD = "RollingForward"
    CANCELLED = "Cancelled"
    COMPLETED = "Completed"
    FAULTED = "Faulted"


class LastAction(str, enum.Enum):
    START = "Start"
    CANCEL = "Cancel"


@dataclass(frozen=True)
class Progress:
    successful: int = 0
    failed: int = 0
    in_progress: int = 0
    pending: int = 0

    def for_storage(self) -> dict[str, int]:
        return {"successfulInstanceCount": self.successful, "failedInstanceCount": self.failed,
                "inProgressInstanceCount": self.in_progress,
                "pendingInstanceCount": self.pending}

    @classmethod
    def from_storage(cls, data: dict[str, Any]) -> Progress:
        return cls(int(data.get("successfulInstanceCount", 0)),
                   int(data.get("failedInstanceCount", 0)),
                   int(data.get("inProgressInstanceCount", 0)),
                   int(data.get("pendingInstanceCount", 0)))


@dataclass(frozen=True)
class BatchRecord:
    """One batch: the instances it took, which succeeded (in place: the same ids; surge: the
    replacements' ids) and which failed, and when it started and ended (epoch seconds of
    the controller's clock; None in rows of earlier versions)."""

    number: int
    instances: tuple[int, ...]
    succeeded: tuple[int, ...] = ()
    failed: tuple[int, ...] = ()
    started: float | None = None
    ended: float | None = None

    def for_storage(self) -> dict[str, Any]:
        return {"batch": self.number, "instances": list(self.instances),
                "succeeded": list(self.succeeded), "failed": list(self.failed),
                "started": self.started, "ended": self.ended}

    @classmethod
    def from_storage(cls, data: dict[str, Any]) -> BatchRecord:
        return cls(int(data["batch"]), tuple(data.get("instances", ())),
                   tuple(data.get("succeeded", ())), tuple(data.get("failed", ())),
                   data.get("started"), data.get("ended"))


@dataclass(frozen=True)
class RollingUpgrade:
    id: int
    set_name: str
    target_generation: int
    status: RollingStatus
    last_action: LastAction
    policy: dict[str, Any]
    progress: Progress
    start_time: str
    end_time: str | None = None
    error: str | None = None
    driver_pid: int | None = None  # shown to users; liveness is the set's lock, not this
    surge: bool = False
    surge_fallback: str | None = None
    thresholds: tuple[str, ...] = ()
    batches: tuple[BatchRecord, ...] = ()
    # the batch being acted on, and (surge) the first id its replacements get, in batch
    # order: what a resumed upgrade needs to finish a batch a killed driver left
    in_flight: tuple[int, ...] = ()
    in_flight_started: float | None = None
    first_new_id: int | None = None
    cancel_note: str | None = None
    rollback_note: str | None = None

    @property
    def running(self) -> bool:
        return self.status is RollingStatus.ROLLING_FORWARD

    @property
    def cancel_requested(self) -> bool:
        return self.last_action is LastAction.CANCEL

    def with_(self, **changes: Any) -> RollingUpgrade:
        return replace(self, **changes)

    def detail_for_storage(self) -> dict[str, Any]:
        return {"pid": self.driver_pid, "surge": self.surge,
                "surgeFallback": self.surge_fallback, "thresholds": list(self.thresholds),
                "batches": [b.for_storage() for b in self.batches],
                "inFlight": list(self.in_flight), "inFlightStarted": self.in_flight_started,
                "firstNewId": self.first_new_id, "cancel": self.cancel_note,
                "rollback": self.rollback_note}

    def for_storage(self) -> dict[str, Any]:
        """The columns ``Store.update_rolling_upgrade`` writes."""
        return {"status": self.status.value, "last_action": self.last_action.value,
                "progress": self.progress.for_storage(), "error": self.error,
                "detail": self.detail_for_storage(), "end_time": self.end_time}

    @classmethod
    def from_storage(cls, row: RollingUpgradeRecord) -> RollingUpgrade:
        d = row.detail
        first_new = d.get("firstNewId")
        return cls(
            id=row.id, set_name=row.set_name, target_generation=row.target_generation,
            status=RollingStatus(row.status), last_action=LastAction(row.last_action),
            policy=dict(row.policy), progress=Progress.from_storage(row.progress),
            start_time=row.start_time, end_time=row.end_time, error=row.error,
            driver_pid=d.get("pid") if isinstance(d.get("pid"), int) else None,
            surge=bool(d.get("surge", False)), surge_fallback=d.get("surgeFallback"),
            thresholds=tuple(d.get("thresholds") or ()),
            batches=tuple(BatchRecord.from_storage(b) for b in d.get("batches") or ()),
            in_flight=tuple(d.get("inFlight") or ()),
            in_flight_started=d.get("inFlightStarted"),
            first_new_id=first_new if isinstance(first_new, int) else None,
            cancel_note=d.get("cancel"), rollback_note=d.get("rollback"))


def migrate_detail(row: RollingUpgradeRecord) -> dict[str, Any]:
    """A row's detail in this version's form (the store's migration calls it)."""
    return RollingUpgrade.from_storage(row).detail_for_storage()


