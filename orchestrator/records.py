"""The typed rows of the store, as every layer sees them.

Owned here: ``ImageRecord``, ``SetRecord``, ``InstanceRecord``, ``HostRecord``,
``ImageCopyRecord``, ``RollingUpgradeRecord``, ``OperationRecord``, ``StepRecord``,
``ServiceRecord``, ``OsUpgradeRecord``: frozen, plain values.

Called by: cli.render, engine.copies, store, usecases.osupgrades, usecases.repairs
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ImageRecord:
    name: str
    version: str
    sha256: str
    path: str  # the image's directory
    manifest: dict[str, Any]
    created_at: str

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class SetRecord:
    name: str
    spec: dict[str, Any]  # ScaleSetSpec as camelCase JSON
    generation: int
    next_instance_id: int
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class InstanceRecord:
    set_name: str
    instance_id: int
    name: str
    status: str  # creating | active | deleting
    mac: str
    ip: str
    network: str
    model_generation: int
    image: str
    host_key_public: str
    host_key_private: str
    seed_instance_id: str
    protect_from_scale_in: bool
    protect_from_scale_set_actions: bool
    power_intent: str  # running | stopped | deallocated: what the user last asked for
    health: dict[str, Any]
    created_at: str
    os_volume: str = ""  # the OS disk in use
    prev_os_volume: str = ""  # the previous OS disk, kept until the new one proves healthy
    prev_generation: int = 0  # the model generation to return to on rollback (0: none)
    prev_image: str = ""
    host: str = "local"  # the host (libvirt daemon) the instance lives on


@dataclass(frozen=True)
class RollingUpgradeRecord:
    id: int
    set_name: str
    status: str  # RollingForward | Cancelled | Completed | Faulted
    last_action: str  # Start | Cancel
    target_generation: int
    policy: dict[str, Any]
    progress: dict[str, int]
    error: str | None
    detail: dict[str, Any]
    start_time: str
    end_time: str | None


@dataclass(frozen=True)
class OperationRecord:
    id: int
    set_name: str
    kind: str
    status: str  # running | succeeded | failed
    detail: dict[str, Any]
    pid: int | None
    started_at: str
    ended_at: str | None


@dataclass(frozen=True)
class StepRecord:
    """One per-instance step of an operation, written before it acts (``started``) and
    after (``done`` or ``failed``); one still ``started`` when its process died is marked
    ``interrupted`` by the reconciler."""

    id: int
    operation_id: int
    set_name: str
    instance: str
    step: str
    status: str  # started | done | failed | interrupted
    error: str | None
    started_at: str
    ended_at: str | None


@dataclass(frozen=True)
class HostRecord:
    """A libvirt daemon the controller drives: where it is, its fault domain, the network
    and pool to use there, and whether new instances may go there."""

    name: str
    uri: str
    fault_domain: str
    network: str
    pool: str
    state: str  # Ready | Cordoned (Unreachable is observed, never stored)
    created_at: str


@dataclass(frozen=True)
class ImageCopyRecord:
    """A file of a registered image (disk, kernel or initrd, by its sha256) copied into one
    host's pool and verified there: the volume and its path on that host."""

    host: str
    sha256: str
    volume: str
    path: str
    created_at: str


@dataclass(frozen=True)
class ServiceRecord:
    """An orchestration service of a set (``AutomaticRepairs``): Running or Suspended, and
    how many of its actions in a row failed."""

    set_name: str
    service: str
    state: str  # Running | Suspended
    failures: int
    updated_at: str


@dataclass(frozen=True)
class OsUpgradeRecord:
    """One automatic OS upgrade run of a set: from which versions to which, when, how it
    ended (Running, Succeeded, Faulted, RolledBack) and what its rollback did."""

    id: int
    set_name: str
    from_versions: list[str]
    target: str
    generation: int  # the model generation the run rolled out
    start_time: str
    end_time: str | None
    result: str
    rollback: dict[str, Any]
    error: str | None
