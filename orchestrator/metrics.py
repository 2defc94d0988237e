"""Prometheus text-format metrics of the durable state, for node_exporter's textfile collector
(``--metrics-file PATH``, env ``ORCH_METRICS_FILE``).

Owned here: the metric names, their labels, how each figure is derived from the store
(``StoreCollector``), the check of the path before a command runs (``check_path``) and the
atomic write (``write``: a temporary file beside PATH, then rename). The only module importing
``prometheus_client``.
Called by: api.routes, cli.app
``orch controller run``)
Only the store is read, never libvirt, so the figures are right after any command, even one
that failed, and writing them cannot hang on a hypervisor.

    orch_set_capacity{set}                                  gauge   desired instance count
    orch_set_generation{set}                                gauge   current model generation
    orch_set_latest_model_instances{set}                    gauge   instances on that generation
    orch_instances{set,health_state,model_generation}       gauge   instances by stored health
    orch_rolling_upgrade_progress{set,state}                gauge   latest rolling upgrade:
                                  state = successful | failed | in_progress | pending
    orch_rolling_upgrade_status{set,code}                   gauge   1 for its code, 0 for others
    orch_probe_latency_seconds{set,instance_id}             gauge   the last health probe's latency
    orch_probe_timestamp_seconds{set,instance_id}           gauge   when that probe ran (Unix time)
    orch_operation_duration_seconds{set,kind,status}        histogram  finished journal operations
    orch_operations_total{set,kind,status}                  counter    finished journal operations
    orch_operations_running{set,kind}                       gauge   operations running now
    orch_repairs_total{set,action,result}                   counter instances repaired:
                                  result = repaired | failed (from the `repair` operations)
    orch_automatic_repairs_suspended{set}                   gauge   1 while AutomaticRepairs
                                                                    is suspended

Instances are labelled ``instance_id``, not ``instance``: Prometheus gives ``instance`` to the
scrape target (node_exporter), and would rename ours to ``exported_instance``. Operations of
sets that no longer exist are left out; an interrupted operation's duration ends when the
reconciler noticed it.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from orchestrator.errors import EnvironmentProblem, InvalidInput
from orchestrator.store import OperationRecord, Store

HEALTH_STATES = ("Initializing", "Healthy", "Unhealthy", "Unknown")
UPGRADE_CODES = ("RollingForward", "Cancelled", "Completed", "Faulted")
PROGRESS_STATES = (
    ("successful", "successfulInstanceCount"),
    ("failed", "failedInstanceCount"),
    ("in_progress", "inProgressInstanceCount"),
    ("pending", "pendingInstanceCount"),
)
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, math.inf)


class StoreCollector:
    """A ``prometheus_client`` collector that reads the store on every ``collect``. With no
    store (no state database yet) every family is present and empty."""

    def __init__(self, store: Store | None) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        capacity = GaugeMetricFamily("orch_set_capacity", "Desired number of instances.",
                                     labels=["set"])
        generation = GaugeMetricFamily("orch_set_generation", "Current model generation.",
                                       labels=["set"])
        latest = GaugeMetricFamily("orch_set_latest_model_instances",
                                   "Instances on the set's current model generation.",
                                   labels=["set"])
        instances = GaugeMetricFamily(
            "orch_instances", "Instances by last recorded health state and model generation.",
            labels=["set", "health_state", "model_generation"])
        progress = GaugeMetricFamily(
            "orch_rolling_upgrade_progress",
            "Instances of the latest rolling upgrade by state.", labels=["set", "state"])
        status = GaugeMetricFamily(
            "orch_rolling_upgrade_status",
            "Latest rolling upgrade: 1 for its running status code, 0 for the others.",
            labels=["set", "code"])
        latency = GaugeMetricFamily("orch_probe_latency_seconds",
                                    "Latency of the last health probe of an instance.",
                                    labels=["set", "instance_id"])
        probed = GaugeMetricFamily("orch_probe_timestamp_seconds",
                                   "When the last health probe of an instance ran (Unix time).",
                                   labels=["set", "instance_id"])
        durations = HistogramMetricFamily(
            "orch_operation_duration_seconds",
            "Durations of finished operations of the journal.", labels=["set", "kind", "status"])
        totals = CounterMetricFamily("orch_operations_total",
                                     "Finished operations of the journal.",
                                     labels=["set", "kind", "status"])
        running = GaugeMetricFamily("orch_operations_running", "Operations running now.",
                                    labels=["set", "kind"])
        repairs = CounterMetricFamily("orch_repairs", "Instances automatic repairs acted on.",
                                      labels=["set", "action", "result"])
        suspended = GaugeMetricFamily("orch_automatic_repairs_suspended",
                                      "1 while the set's AutomaticRepairs is suspended.",
                                      labels=["set"])
        store = self.store
        for rec in store.list_sets() if store is not None else []:
            name = rec.name
            members = store.list_instances(name) if store is not None else []
            capacity.add_metric([name], float(rec.spec.get("capacity", len(members))))
            generation.add_metric([name], float(rec.generation))
            latest.add_metric([name], float(sum(i.model_generation == rec.generation
                                                for i in members)))
            counts = Counter((i.health.get("state") or "Unknown", i.model_generation)
                             for i in members)
            for gen in sorted({rec.generation, *(i.model_generation for i in members)}):
                for state in sorted({*HEALTH_STATES, *(s for s, _ in counts)}):
                    instances.add_metric([name, state, str(gen)], float(counts[(state, gen)]))
            for inst in members:
                last = inst.health.get("last") or {}
                if last.get("latencyMs") is not None:
                    latency.add_metric([name, str(inst.instance_id)], last["latencyMs"] / 1000)
                at = _timestamp(last.get("time"))
                if at is not None:
                    probed.add_metric([name, str(inst.instance_id)], at)
            upgrade = store.latest_rolling_upgrade(name) if store is not None else None
            if upgrade is not None:
                for state, key in PROGRESS_STATES:
                    progress.add_metric([name, state], float(upgrade.progress.get(key, 0)))
                for code in sorted({*UPGRADE_CODES, upgrade.status}):
                    status.add_metric([name, code], 1.0 if code == upgrade.status else 0.0)
            ops = store.list_operations(name) if store is not None else []
            _add_operations(ops, name, durations=durations, totals=totals, running=running)
            _add_repairs(ops, name, repairs=repairs)
            service = store.service(name, "AutomaticRepairs") if store is not None else None
            suspended.add_metric([name], 1.0 if service and service.state == "Suspended" else 0.0)
        yield from (capacity, generation, latest, instances, progress, status, latency, probed,
                    durations, totals, running, repairs, suspended)


def _add_repairs(ops: Iterable[OperationRecord], set_name: str, *,
                 repairs: CounterMetricFamily) -> None:
    counts: Counter[tuple[str, str]] = Counter()
    for op in ops:
        if op.kind != "repair" or op.status == "running":
            continue
        action = str(op.detail.get("action", "Replace"))
        done = len(op.detail.get("repaired", []))
        counts[(action, "repaired")] += done
        counts[(action, "failed")] += len(op.detail.get("instances", [])) - done
    for (action, result), count in sorted(counts.items()):
        repairs.add_metric([set_name, action, result], float(count))


def _add_operations(ops: Iterable[OperationRecord], set_name: str, *,
                    durations: HistogramMetricFamily, totals: CounterMetricFamily,
                    running: GaugeMetricFamily) -> None:
    finished: dict[tuple[str, str], list[float]] = defaultdict(list)
    now_running: Counter[str] = Counter()
    for op in ops:
        if op.status == "running":
            now_running[op.kind] += 1
            continue
        start, end = _timestamp(op.started_at), _timestamp(op.ended_at)
        if start is not None and end is not None:
            finished[(op.kind, op.status)].append(max(0.0, end - start))
    for (kind, status), seconds in sorted(finished.items()):
        buckets = [(_bucket_label(le), float(sum(s <= le for s in seconds)))
                   for le in DURATION_BUCKETS]
        durations.add_metric([set_name, kind, status], buckets, sum(seconds))
        totals.add_metric([set_name, kind, status], float(len(seconds)))
    for kind, count in sorted(now_running.items()):
        running.add_metric([set_name, kind], float(count))


def _bucket_label(le: float) -> str:
    return "+Inf" if le == math.inf else repr(le)


def _timestamp(text: object) -> float | None:
    """Unix time of an ISO 8601 string of the store (``...Z`` or ``+00:00``), else None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        value = _dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.UTC)
    return value.timestamp()


def registry_of(store: Store | None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return registry


def check_path(path: Path) -> None:
    """Refuse, before anything changes, a metrics path that can never be written: its
    directory missing, or the path itself a directory (exit 2)."""
    if path.is_dir():
        raise InvalidInput(f"--metrics-file {path} is a directory; give a file such as "
                           f"{path / 'orchestrator.prom'}")
    if not path.parent.is_dir():
        raise InvalidInput(f"--metrics-file {path}: directory {path.parent} does not exist")


def write(store: Store | None, path: Path) -> None:
    """Write the metrics of ``store`` to ``path`` atomically (readers see the old file or the
    new one, never a part). Raises EnvironmentProblem if it cannot be written."""
    try:
        write_to_textfile(os.fspath(path), registry_of(store))
    except OSError as exc:
        raise EnvironmentProblem(f"cannot write metrics file {path}: {exc.strerror or exc}",
                                 hint="check --metrics-file / ORCH_METRICS_FILE") from exc
