"""The reconcile loop behind ``orch controller run [--once]``: observe each set, compare it with
what the store says it should be, and act — finish or undo interrupted work, roll out model
changes of Automatic and Rolling sets, and repair instances that should run but do not.

Owned here: the order of those checks and what each one does. Called by ``cli`` only; acts
through ``service`` and ``upgrades`` so that every action follows the same steps as the
commands that started it. Observed libvirt state wins over the store where they disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator import logs
from orchestrator.engine import operations as ops
from orchestrator.errors import Conflict, OrchError
from orchestrator.hypervisor.base import PowerState
from orchestrator.upgrades import Upgrades, driver_alive, pid_alive


@dataclass
class PassReport:
    """What one pass did, set by set (shown by `controller run`)."""

    actions: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"actions": self.actions, "problems": self.problems}


@dataclass
class Reconciler:
    upgrades: Upgrades

    @property
    def service(self) -> Any:
        return self.upgrades.service

    def run_pass(self) -> PassReport:
        report = PassReport()
        for rec in self.service.store.list_sets():
            try:
                with logs.scope(rec.name):
                    self._reconcile_set(rec.name, report)
            except Conflict as exc:
                report.problems.append(f"{rec.name}: skipped: {exc.message}")
            except OrchError as exc:
                report.problems.append(f"{rec.name}: {exc.one_line()}")
        return report

    def _act(self, report: PassReport, line: str) -> None:
        report.actions.append(line)
        self.service.progress(line)

    def _reconcile_set(self, name: str, report: PassReport) -> None:
        store = self.service.store
        # 0. operations of processes that died are marked so in the journal
        for op in store.list_operations(name):
            if op.status == "running" and not pid_alive(op.pid):
                store.end_operation(op.id, "interrupted",
                                    {**op.detail, "error": f"process {op.pid} stopped"},
                                    now=self.service.engine.now())
                self._act(report, f"{name}: {op.kind} (operation {op.id}) was interrupted")
        # 1. instances left half-made or half-deleted by an interrupted command
        with self.service.locked(name, "resume"):
            for inst in store.list_instances(name):
                if inst.status == "deleting":
                    self._act(report, f"{inst.name}: finishing an interrupted delete")
                    self.service.teardown_and_forget(inst)
                elif inst.status == "creating":
                    self._act(report, f"{inst.name}: removing a half-created instance")
                    self.service.teardown_and_forget(inst)
                elif inst.status in (ops.REIMAGING, ops.REIMAGING_ALL_DISKS):
                    self._act(report, f"{inst.name}: finishing an interrupted reimage")
                    self.upgrades.finish_reimage(name, inst)
        # 2. a rolling upgrade whose process died goes on (done instances are skipped)
        latest = store.latest_rolling_upgrade(name)
        if latest is not None and latest.status == "RollingForward" and not driver_alive(latest):
            self._act(report, f"{name}: resuming an interrupted rolling upgrade")
            self.upgrades.start_rolling(name)
        # 3. capacity: instances missing after an interrupted create or scale
        rec = store.get_set(name)
        spec = self.service.spec_of(rec)
        count = len(store.list_instances(name))
        if count < spec.capacity:
            self._act(report, f"{name}: {count} of {spec.capacity} instances; creating the rest")
            self.service.scale(name, spec.capacity)
        # 4. model changes not yet rolled out (recorded with --no-wait, or interrupted)
        behind = [i for i in store.list_instances(name)
                  if i.model_generation != rec.generation and not i.protect_from_scale_set_actions]
        mode = spec.upgrade_policy.mode
        latest = store.latest_rolling_upgrade(name)
        if behind and mode == "Automatic":
            self._act(report, f"{name}: Automatic upgrade of {len(behind)} instances")
            self.upgrades.upgrade_all(name)
        elif behind and mode == "Rolling" and (
                latest is None or latest.target_generation != rec.generation):
            # an upgrade to this generation that ended Faulted or Cancelled waits for the user
            self._act(report, f"{name}: rolling upgrade to generation {rec.generation}")
            self.upgrades.start_rolling(name)
        # 5. repairs: an instance the user wants running that is not (crashed, killed, or
        # left shutting down by an interrupted command)
        down: dict[PowerState, list[int]] = {
            PowerState.STOPPED: [], PowerState.CRASHED: [], PowerState.SHUTTING_DOWN: []}
        for inst in store.list_instances(name):
            state = self.service.hv.domain_state(inst.name)
            if inst.power_intent == "running" and state in down:
                down[state].append(inst.instance_id)
        stopped = down[PowerState.STOPPED] + down[PowerState.CRASHED]
        if stopped:
            self._act(report, f"{name}: starting instances {stopped} that should be running")
            self.service.power(name, stopped, "start")
        if down[PowerState.SHUTTING_DOWN]:
            ids = down[PowerState.SHUTTING_DOWN]
            self._act(report, f"{name}: restarting instances {ids} left shutting down")
            self.service.power(name, ids, "restart")
        # 6. new models an interrupted upgrade left uncommitted: healthy ones are kept
        latest = store.latest_rolling_upgrade(name)
        if latest is None or latest.status != "RollingForward":
            for committed in self.upgrades.commit_healthy(name):
                self._act(report, f"{committed}: healthy on its new model; previous OS disk "
                                  "removed")
