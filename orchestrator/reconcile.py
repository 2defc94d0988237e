"""The reconcile loop behind ``orch controller run [--once]``: observe each set, compare it with
what the store says it should be, and act — finish or undo interrupted work, roll out model
changes of Automatic and Rolling sets, and repair instances that should run but do not.

Owned here: the order of those checks and what each one does.
Called by: cli.app, cli.vmss
It acts through ``service`` and ``upgrades`` so that every action follows the same steps as the
commands that started it. Observed libvirt state wins over the store where they disagree.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from orchestrator import logs
from orchestrator.engine import operations as ops
from orchestrator.errors import Conflict, OrchError
from orchestrator.hypervisor.base import PowerState
from orchestrator.store import OperationRecord
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
        sets = self.service.store.list_sets()
        # a create killed before its set was recorded: nothing to resume, only the journal
        for gone in sorted({op.set_name for op in self.service.store.list_operations()
                            if _dead(op)} - {rec.name for rec in sets}):
            self._mark_dead_operations(gone, report)
        for rec in sets:
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

    def _observed_wins(self, name: str, report: PassReport) -> None:
        """Where libvirt and the store disagree, libvirt's objects are the facts: what it
        holds of this set that no store row names is removed (nothing else will ever
        remove it), and an active instance whose domain is gone is defined again."""
        service = self.service
        instances = service.store.list_instances(name)
        networks = {i.network for i in instances} | {service.spec_of(
            service.store.get_set(name)).model.network}
        domains = service.hv.list_domains()
        orphans = ops.find_orphans(service.engine, name, known={i.instance_id for i in instances},
                                   networks=networks, domains=domains)
        if orphans:
            self._act(report, f"{name}: removing what no instance owns: {orphans.describe()}")
            problems = ops.remove_orphans(service.engine, orphans)
            report.problems.extend(f"{name}: {p}" for p in problems)
        owners = {d.name: d.owner for d in domains}
        for inst in instances:
            if inst.status != "active":
                continue
            if inst.name not in owners:
                self._act(report, f"{inst.name}: its domain is gone from libvirt; defining it "
                                  "again on its remaining disks")
                self.upgrades.recreate_missing(name, inst)
                continue
            owner = owners[inst.name]
            if owner is None or owner.generation == inst.model_generation:
                continue
            if self.upgrades.adopt_generation(name, inst, owner.generation):
                self._act(report, f"{inst.name}: its domain runs generation {owner.generation}, "
                                  f"not {inst.model_generation}; recorded as such")
            else:
                report.problems.append(
                    f"{inst.name}: its domain says generation {owner.generation}, the store "
                    f"{inst.model_generation}, and the disks of the former are missing")

    def interrupted(self, name: str) -> bool:
        """Whether a killed process left work on this set: an operation still marked
        running whose process is gone, or an instance half-created, -deleted or -reimaged."""
        store = self.service.store
        return any(_dead(op) for op in store.list_operations(name)) or any(
            i.status != "active" for i in store.list_instances(name))

    def resume_interrupted(self, name: str, report: PassReport | None = None) -> bool:
        """Finish or undo what a killed process left on the set; the caller holds its lock.
        Run by the reconciler, and by every command that takes a set's lock before it acts
        (``Service.after_lock``), so the next command on a set resumes it. True if a
        killed process's operation was found."""
        report = report if report is not None else PassReport()
        store = self.service.store
        found = self._mark_dead_operations(name, report)
        # instances left half-made or half-deleted by an interrupted command
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
        self._observed_wins(name, report)
        return found

    def _mark_dead_operations(self, name: str, report: PassReport) -> bool:
        """Operations of processes that died are marked so, with the steps they were in.
        True if there was one."""
        store = self.service.store
        found = False
        for op in store.list_operations(name):
            if _dead(op):
                now = self.service.engine.now()
                cut = store.interrupt_steps(op.id, now=now)
                where = "".join(f"; during {st.step} of {st.instance}" for st in cut)
                store.end_operation(op.id, "interrupted",
                                    {**op.detail, "error": f"process {op.pid} stopped{where}"},
                                    now=now)
                self._act(report, f"{name}: {op.kind} (operation {op.id}) was interrupted{where}")
                found = True
        return found

    def on_lock(self, name: str) -> None:
        """``Service.after_lock``: resume the set first if a killed process left work."""
        if self.interrupted(name):
            self.resume_interrupted(name)

    def _surge_running(self, name: str) -> bool:
        """A live rolling upgrade may hold capacity + batch instances for a while."""
        latest = self.service.store.latest_rolling_upgrade(name)
        return latest is not None and latest.status == "RollingForward" and driver_alive(latest)

    def _reconcile_set(self, name: str, report: PassReport) -> None:
        store = self.service.store
        # 0-1. interrupted operations and half-done instances; libvirt's view wins
        with self.service.locked(name, "resume", resume=False):
            interrupted = self.resume_interrupted(name, report)
        # 2. a rolling upgrade whose process died goes on (done instances are skipped)
        latest = store.latest_rolling_upgrade(name)
        if latest is not None and latest.status == "RollingForward" and not driver_alive(latest):
            self._act(report, f"{name}: resuming an interrupted rolling upgrade")
            self.upgrades.start_rolling(name)
        # 3. capacity: instances missing after an interrupted create or scale, or made by a
        # scale-out killed before it recorded the new capacity (undone: capacity is the intent)
        rec = store.get_set(name)
        spec = self.service.spec_of(rec)
        count = len(store.list_instances(name))
        if count < spec.capacity:
            self._act(report, f"{name}: {count} of {spec.capacity} instances; creating the rest")
            self.service.scale(name, spec.capacity)
        elif count > spec.capacity and not self._surge_running(name):
            self._act(report, f"{name}: {count} instances for a capacity of {spec.capacity}; "
                              "removing the extra ones")
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
        # 7. instances a killed command booted but never saw settle are waited on, as the
        # command would have (bounded by their grace period)
        if interrupted:
            waiting = [i for i in store.list_instances(name)
                       if i.status == "active" and i.power_intent == "running"
                       and i.health.get("state") in (None, "Initializing")
                       and self.service.hv.domain_state(i.name) is PowerState.RUNNING]
            if waiting:
                self._act(report, f"{name}: waiting for instances "
                                  f"{[i.instance_id for i in waiting]} to settle")
                asyncio.run(self.service.await_health(name, waiting))


def _dead(op: OperationRecord) -> bool:
    """An operation still marked running whose process is gone (killed, or the host
    rebooted)."""
    return op.status == "running" and not pid_alive(op.pid)
