"""The output form of the use cases' records: the ``-o json`` keys of sets, instances,
rolling upgrades, the journal and run-command (docs/semantics.md names them).

Owned here: ``set_json``, ``instance_json``, ``instance_detail_json``, ``rolling_json``,
``operation_json``, ``command_json``, ``boot_log_json``, ``image_json``, ``host_json``: the
CLI's ``-o json`` and the HTTP API's bodies are the same.

Called by: api.routes, cli.hosts, cli.images, cli.vmss
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from orchestrator.clock import iso
from orchestrator.engine.upgrade_state import BatchRecord, RollingUpgrade
from orchestrator.images import Image
from orchestrator.records import OsUpgradeRecord
from orchestrator.usecases.bootdiag import BootLog
from orchestrator.usecases.hosts import HostView
from orchestrator.usecases.views import CommandResult, InstanceView, OperationView, SetView


def set_json(view: SetView) -> dict[str, Any]:
    data = view.spec.to_json_dict()
    return {
        "name": view.name,
        "generation": view.generation,
        "capacity": view.spec.capacity,
        "model": data["model"],
        "upgradePolicy": data["upgradePolicy"],
        "scaleInPolicy": data["scaleInPolicy"],
        "automaticRepairsPolicy": data["automaticRepairsPolicy"],
        "orchestrationServices": [{"serviceName": name, "serviceState": state}
                                  for name, state in view.services.items()],
        "instanceCount": view.instance_count,
        "latestModelInstances": view.latest_model_instances,
        "faultDomains": view.fault_domain_counts,
        "createdAt": view.created_at,
        "updatedAt": view.updated_at,
    }


def os_upgrade_json(run: OsUpgradeRecord) -> dict[str, Any]:
    return {"id": run.id, "fromVersions": run.from_versions, "targetVersion": run.target,
            "generation": run.generation, "startTime": run.start_time, "endTime": run.end_time,
            "result": run.result, "rollback": run.rollback or None, "error": run.error}


def instance_json(view: InstanceView) -> dict[str, Any]:
    return {
        "instanceId": view.instance_id,
        "name": view.name,
        "powerState": view.power_state,
        "healthState": view.health_state,
        "latestModelApplied": view.latest_model_applied,
        "image": view.image,
        "modelGeneration": view.model_generation,
        "ipAddress": view.ip_address,
        "protectFromScaleIn": view.protect_from_scale_in,
        "protectFromScaleSetActions": view.protect_from_scale_set_actions,
        "host": view.host,
        "faultDomain": view.fault_domain,
    }


def instance_detail_json(view: InstanceView) -> dict[str, Any]:
    """`get-instance-view`: the instance with its last probe and identity; one that is not
    Healthy with its last console lines (``bootDiagnostics``; null for a Healthy one)."""
    diag = view.boot_diagnostics
    return {**instance_json(view), "lastProbe": view.last_probe,
            "healthChangedAt": view.health_changed_at, "macAddress": view.mac_address,
            "network": view.network, "seedInstanceId": view.seed_instance_id,
            "hostKey": view.host_key, "createdAt": view.created_at,
            "bootDiagnostics": None if diag is None else {
                "consoleTail": list(diag.console_tail), "error": diag.error}}


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return iso(datetime.fromtimestamp(ts, tz=UTC))


def _batch_json(batch: BatchRecord) -> dict[str, Any]:
    return {"batch": batch.number, "instances": list(batch.instances),
            "succeeded": list(batch.succeeded), "failed": list(batch.failed),
            "startTime": _iso(batch.started), "endTime": _iso(batch.ended)}


def rolling_json(up: RollingUpgrade) -> dict[str, Any]:
    """`rolling-upgrade get-latest`."""
    return {
        "runningStatus": {"code": up.status.value, "startTime": up.start_time,
                          "lastAction": up.last_action.value, "endTime": up.end_time},
        "lastAction": up.last_action.value,
        "progress": up.progress.for_storage(),
        "error": {"message": up.error} if up.error else None,
        "policy": up.policy,
        "targetGeneration": up.target_generation,
        "thresholds": list(up.thresholds),
        "batches": [_batch_json(b) for b in up.batches],
        "inFlight": list(up.in_flight),
        "surge": up.surge,
        "surgeFallback": up.surge_fallback,
        "cancel": up.cancel_note,
        "rollback": up.rollback_note,
    }


def operation_json(op: OperationView) -> dict[str, Any]:
    return {"id": op.id, "kind": op.kind, "status": op.status, "pid": op.pid,
            "startedAt": op.started_at, "endedAt": op.ended_at, "error": op.error,
            "steps": [{"instance": st.instance, "step": st.step, "status": st.status,
                       "startedAt": st.started_at, "endedAt": st.ended_at,
                       "error": st.error} for st in op.steps]}


def boot_log_json(found: BootLog) -> dict[str, Any]:
    """`boot-diagnostics get-boot-log`."""
    return {"name": found.name, "instanceId": found.instance_id, "host": found.host,
            "log": found.log}


def command_json(result: CommandResult) -> dict[str, Any]:
    return {"exitStatus": result.exit_status, "stdout": result.stdout, "stderr": result.stderr}


def image_json(img: Image) -> dict[str, Any]:
    rec = img.record
    return {
        "ref": rec.ref, "name": rec.name, "version": rec.version, "sha256": rec.sha256,
        "path": rec.path, "sizeMiB": round(img.disk.stat().st_size / 2**20, 1)
        if img.disk.exists() else None,
        "kernelBoot": img.kernel is not None, "sshUser": img.ssh_user,
        "healthCommand": img.health_command, "createdAt": rec.created_at,
        "manifest": rec.manifest,
    }


def host_json(view: HostView) -> dict[str, Any]:
    return {"name": view.name, "uri": view.uri, "faultDomain": view.fault_domain,
            "network": view.network, "pool": view.pool, "state": view.state,
            "instances": view.instances, "memoryMiBFree": view.memory_mib_free,
            "poolBytesFree": view.pool_bytes_free, "addressesFree": view.addresses_free}
