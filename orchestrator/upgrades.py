"""Model changes and how they reach instances: ``vmss update``, ``update-instances``,
``reimage``, Automatic upgrades and rolling upgrades (in place, or with MaxSurge), with
their status (``rolling-upgrade get-latest``) and cancel.

Owned here: the order of steps of each, the rolling-upgrade driver loop (batches acted on
concurrently, health thresholds between them, pause, cancel, rollback) and the surge
capacity check.
Called by: cli.app, reconcile, simworld
It uses ``engine.policy`` to choose batches and ``engine.operations`` to act on instances.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.engine import operations as ops
from orchestrator.engine import policy
from orchestrator.engine.health import HealthRecord, HealthState
from orchestrator.errors import Conflict, InvalidInput, NotFound, OperationFailed, OrchError
from orchestrator.hypervisor.base import PowerState
from orchestrator.model import Model, RollingUpgradePolicy, ScaleSetSpec, validate
from orchestrator.service import Service, raise_unhealthy
from orchestrator.store import InstanceRecord, RollingUpgradeRecord, Store


@dataclass(frozen=True)
class Outcome:
    """What happened to one instance of a batch."""

    instance_id: int
    healthy: bool
    error: str | None = None


@dataclass
class Upgrades:
    service: Service

    @property
    def store(self) -> Store:
        return self.service.store

    def _model(self, set_name: str, generation: int) -> Model:
        return validate(Model, self.store.model_of_generation(set_name, generation))

    # --- vmss apply -f ----------------------------------------------------------------------
    def apply(self, spec: ScaleSetSpec, *, wait: bool = True) -> dict[str, Any]:
        """Create the set if absent; else bring capacity, model and policy to the spec's."""
        rec = self.store.find_set(spec.name)
        if rec is None:
            return self.service.create(spec, wait=wait)
        current = self.service.spec_of(rec)
        if spec.capacity != current.capacity:
            self.service.scale(spec.name, spec.capacity, wait=wait)
        if (current.model, current.upgrade_policy, current.scale_in_policy) != (
                spec.model, spec.upgrade_policy, spec.scale_in_policy):
            return self.apply_spec(spec, wait=wait)
        return self.service.set_view(self.store.get_set(spec.name))

    # --- vmss update ---------------------------------------------------------------------
    def update(self, set_name: str, changes: dict[str, Any], *, wait: bool = True,
               allow_surge_fallback: bool = False) -> dict[str, Any]:
        """Change the model and/or the policy; a model change makes a new generation and is
        rolled out as the upgrade policy says (Manual: not at all)."""
        rec = self.store.get_set(set_name)
        current = self.service.spec_of(rec)
        data = current.to_json_dict()
        model = {**data["model"], **changes.get("model", {})}
        rolling = {**data["upgradePolicy"]["rollingUpgradePolicy"],
                   **changes.get("rollingUpgradePolicy", {})}
        upgrade_policy = {"mode": changes.get("mode", data["upgradePolicy"]["mode"]),
                          "rollingUpgradePolicy": rolling}
        new = validate(ScaleSetSpec, {**data, "model": model, "upgradePolicy": upgrade_policy,
                                      **({"scaleInPolicy": changes["scaleInPolicy"]}
                                         if "scaleInPolicy" in changes else {})})
        return self.apply_spec(new, wait=wait, allow_surge_fallback=allow_surge_fallback)

    def apply_spec(self, new: ScaleSetSpec, *, wait: bool = True,
                   allow_surge_fallback: bool = False) -> dict[str, Any]:
        rec = self.store.get_set(new.name)
        current = self.service.spec_of(rec)
        if new.model.network != current.model.network:
            raise InvalidInput("changing the network of an existing scale set is not supported")
        model_changed = new.model != current.model
        if model_changed:
            self.service.registry.verify(new.model.image).check_memory(new.model.memory_mib)
        for warning in new.upgrade_policy.rolling_upgrade_policy.warnings():
            self.service.progress(f"warning: {warning}")
        with self.service.locked(new.name, "update"):
            if new.capacity != current.capacity:
                raise InvalidInput("change the capacity with `orch vmss scale` (or apply)")
            rolling = new.upgrade_policy.rolling_upgrade_policy
            if (model_changed and new.upgrade_policy.mode == "Rolling" and rolling.max_surge
                    and not allow_surge_fallback):
                # refused before the model is recorded: bad input changes nothing
                shortage = self.surge_shortage(new.name, new)
                if shortage:
                    raise InvalidInput(_surge_refusal(shortage))
            rec = self.store.update_spec(new.name, new.to_json_dict(),
                                         new_generation=model_changed, now=self.service.engine.now())
            if model_changed:
                self.service.progress(f"{new.name}: model generation {rec.generation}")
                self.store.add_event(new.name, f"model generation {rec.generation}",
                                     now=self.service.engine.now())
        if not model_changed or not wait:
            return self.service.set_view(rec)
        mode = new.upgrade_policy.mode
        if mode == "Automatic":
            self.upgrade_all(new.name)
        elif mode == "Rolling":
            status = self.start_rolling(new.name, allow_surge_fallback=allow_surge_fallback)
            if status["runningStatus"]["code"] == "Faulted":
                raise OperationFailed(f"rolling upgrade of {new.name} Faulted: "
                                      f"{status['error']['message']}")
        return self.service.set_view(self.store.get_set(new.name))

    # --- instances brought to the latest model ---------------------------------------------
    async def _apply(self, set_name: str, instances: Sequence[InstanceRecord]) -> list[Outcome]:
        """Apply the latest model to ``instances`` concurrently and wait for their health;
        healthy ones are committed (previous OS disk dropped)."""
        rec = self.store.get_set(set_name)
        model = self.service.spec_of(rec).model
        image = self.service.registry.verify(model.image)
        engine = self.service.engine

        async def one(inst: InstanceRecord) -> InstanceRecord | Outcome:
            self.service.progress(f"{inst.name}: applying generation {rec.generation} ({image.ref})")
            try:
                return await ops.apply_model(engine, inst, model=model,
                                             generation=rec.generation, image=image)
            except OrchError as exc:
                self.service.progress(f"{inst.name}: failed: {exc.one_line()}")
                return Outcome(inst.instance_id, False, exc.one_line())

        started = await asyncio.gather(*(one(i) for i in instances))
        booted = [s for s in started if isinstance(s, InstanceRecord)]
        outcomes = [s for s in started if isinstance(s, Outcome)]
        booted = [self.service.record_boot(i) for i in booted]
        final = await self.service.await_health(set_name, booted)
        for inst in booted:
            health = final[inst.instance_id]
            ok = health.state is HealthState.HEALTHY
            if ok:
                fresh = self.store.find_instance(set_name, inst.instance_id)
                if fresh is not None:
                    ops.commit_model(engine, fresh)
            outcomes.append(Outcome(inst.instance_id, ok, None if ok else health.state.value))
        return sorted(outcomes, key=lambda o: o.instance_id)

    def update_instances(self, set_name: str, ids: Sequence[int] | None) -> list[dict[str, Any]]:
        """Manual mode's `update-instances`: the latest model to the instances named."""
        self.service.instances_of(set_name, ids)  # bad input is refused before the lock
        with self.service.locked(set_name, "update-instances"):
            instances = self.service.instances_of(set_name, ids)
            protected = [str(i.instance_id) for i in instances if i.protect_from_scale_set_actions]
            if protected and ids is not None:
                raise InvalidInput(f"instances {', '.join(protected)} are protected from scale set actions")
            generation = self.store.get_set(set_name).generation
            todo = [i for i in instances if not i.protect_from_scale_set_actions
                    and i.model_generation != generation]
            outcomes = asyncio.run(self._apply(set_name, todo))
        self._raise_failed("update-instances", set_name, outcomes)
        return [self.service.instance_view(set_name, i.instance_id, refresh=False) for i in instances]

    def upgrade_all(self, set_name: str) -> None:
        """Automatic mode: every instance at once, no ordering or availability guarantee."""
        with self.service.locked(set_name, "automatic-upgrade"):
            generation = self.store.get_set(set_name).generation
            todo = [i for i in self.store.list_instances(set_name)
                    if i.model_generation != generation and not i.protect_from_scale_set_actions]
            self.service.progress(f"{set_name}: Automatic upgrade of {len(todo)} instances at once")
            outcomes = asyncio.run(self._apply(set_name, todo))
        self._raise_failed("automatic upgrade", set_name, outcomes)

    def _raise_failed(self, action: str, set_name: str, outcomes: Sequence[Outcome]) -> None:
        bad = [o for o in outcomes if not o.healthy]
        if bad:
            names = "; ".join(f"{set_name}-{o.instance_id} {o.error or 'unhealthy'}" for o in bad)
            raise OperationFailed(f"{action}: {len(bad)} of {len(outcomes)} instances failed: {names}")

    # --- reimage -------------------------------------------------------------------------
    def reimage(self, set_name: str, ids: Sequence[int] | None, *, all_disks: bool = False,
                wait: bool = True) -> list[dict[str, Any]]:
        rec = self.store.get_set(set_name)
        profile = self.service.spec_of(rec).model
        self.service.instances_of(set_name, ids)  # bad input is refused before the lock
        with self.service.locked(set_name, "reimage"):
            instances = self.service.instances_of(set_name, ids)
            protected = [str(i.instance_id) for i in instances if i.protect_from_scale_set_actions]
            if protected:
                raise InvalidInput(f"instances {', '.join(protected)} are protected from scale set actions")
            key = self.service.admin_key(set_name)
            engine = self.service.engine

            async def one(inst: InstanceRecord) -> InstanceRecord:
                image = self.service.registry.verify(inst.image)
                model = self._model(set_name, inst.model_generation)
                self.service.progress(f"{inst.name}: reimaging from {image.ref}"
                                      + (" (all disks)" if all_disks else ""))
                done = await ops.reimage(engine, inst, model=model, profile=profile, image=image,
                                         admin_key=key.public_openssh, all_disks=all_disks)
                return self.service.record_boot(done)

            async def run() -> dict[int, HealthRecord]:
                done = await asyncio.gather(*(one(i) for i in instances))
                return await self.service.await_health(set_name, done) if wait else {}

            final = asyncio.run(run())
        if wait:
            raise_unhealthy("reimage", {f"{set_name}-{i}": r for i, r in final.items()})
        return [self.service.instance_view(set_name, i.instance_id, refresh=False) for i in instances]

    def finish_reimage(self, set_name: str, inst: InstanceRecord) -> None:
        """Finish a reimage an interrupted process recorded (for the reconciler)."""
        profile = self.service.spec_of(self.store.get_set(set_name)).model
        image = self.service.registry.verify(inst.image)
        model = self._model(set_name, inst.model_generation)
        key = self.service.admin_key(set_name)

        async def run() -> None:
            done = await ops.finish_reimage(self.service.engine, inst, model=model,
                                            profile=profile, image=image,
                                            admin_key=key.public_openssh)
            await self.service.await_health(set_name, [self.service.record_boot(done)])

        asyncio.run(run())

    def recreate_missing(self, set_name: str, inst: InstanceRecord) -> None:
        """An instance the store holds as active whose domain libvirt no longer has (undefined
        by hand, lost with the host's libvirt config): defined again with the same name, MAC,
        IP and host key, on the volumes that remain (its OS and data disks are kept; missing
        ones are made anew), and started if the user wants it running (then its health
        is awaited, as after any start)."""
        model = self._model(set_name, inst.model_generation)
        image = self.service.registry.verify(inst.image)
        key = self.service.admin_key(set_name)
        running = inst.power_intent == "running"
        with self.service.engine.step(inst, "recreate"):
            ops.provision(self.service.engine, inst, model, image, admin_key=key.public_openssh,
                          start=running)
        if running:
            booted = self.service.record_boot(inst)
            asyncio.run(self.service.await_health(set_name, [booted]))

    def adopt_generation(self, set_name: str, inst: InstanceRecord, generation: int) -> bool:
        """Record the generation the instance's domain was defined with (see
        ``ops.adopt_generation``); False if that cannot be done safely."""
        try:
            model = self._model(set_name, generation)
        except NotFound:
            return False
        image = self.service.registry.get(model.image)
        with self.service.engine.step(inst, "adopt-generation"):
            adopted = ops.adopt_generation(self.service.engine, inst, generation=generation,
                                           image=image)
        if adopted is None:
            return False
        # started by the dead process at a time nobody recorded: its grace period starts now
        self.service.record_boot(adopted)
        return True

    def commit_healthy(self, set_name: str) -> list[str]:
        """Instances left uncommitted by an interrupted upgrade: each running one is waited
        on until settled (Healthy, or its grace period over, counted from its boot); the
        healthy ones keep their new model (the previous OS disk goes), others keep it for
        a rollback."""
        pending = [i for i in self.store.list_instances(set_name)
                   if i.status == "active" and (i.prev_os_volume or i.prev_generation)
                   and self.service.hv.domain_state(i.name) is PowerState.RUNNING]
        if not pending:
            return []
        final = asyncio.run(self.service.await_health(set_name, pending))
        done = []
        for inst in pending:
            fresh = self.store.find_instance(set_name, inst.instance_id)
            if fresh is not None and final[inst.instance_id].state is HealthState.HEALTHY:
                ops.commit_model(self.service.engine, fresh)
                done.append(inst.name)
        return done

    # --- rolling upgrades --------------------------------------------------------------------
    def start_rolling(self, set_name: str, *, allow_surge_fallback: bool = False) -> dict[str, Any]:
        rec = self.store.get_set(set_name)
        spec = self.service.spec_of(rec)
        if spec.upgrade_policy.mode != "Rolling":
            raise InvalidInput(f"scale set {set_name} has upgrade policy {spec.upgrade_policy.mode}; "
                               "rolling upgrades need mode Rolling")
        latest = self.store.latest_rolling_upgrade(set_name)
        superseded = None
        if latest is not None and latest.status == "RollingForward":
            superseded = latest
            if driver_alive(latest):
                raise Conflict(f"a rolling upgrade of {set_name} is already running "
                               f"(pid {latest.detail.get('pid')})")
            # its process died; this upgrade takes over (done instances are skipped)
            self.store.update_rolling_upgrade(
                latest, status="Cancelled", end_time=self.service.engine.now(),
                detail={**latest.detail, "cancel": "interrupted: the process driving it "
                        f"(pid {latest.detail.get('pid')}) stopped; superseded"})
        rolling = spec.upgrade_policy.rolling_upgrade_policy
        with self.service.locked(set_name, "rolling-upgrade"):
            if superseded is not None:
                asyncio.run(self._finish_surge_batch(set_name, superseded))
            surge = rolling.max_surge
            fallback_note = None
            if surge:
                shortage = self.surge_shortage(set_name)
                if shortage:
                    if not allow_surge_fallback:
                        raise InvalidInput(_surge_refusal(shortage))
                    fallback_note = f"maxSurge fell back to in-place: host lacks {shortage}"
                    self.service.progress(f"warning: {fallback_note}")
                    surge = False
            instances = self.store.list_instances(set_name)
            upgrade = self.store.add_rolling_upgrade(
                set_name, target_generation=rec.generation, policy=rolling.to_json_dict(),
                progress=_progress(0, 0, 0, sum(1 for i in instances
                                                if i.model_generation != rec.generation)),
                now=self.service.engine.now())
            upgrade = self.store.update_rolling_upgrade(upgrade, detail={
                "pid": os.getpid(), "surge": surge, "surgeFallback": fallback_note,
                "thresholds": policy.thresholds(rolling, spec.capacity), "batches": []})
            final = asyncio.run(self._roll(set_name, upgrade, surge=surge))
        return rolling_status(final)

    def cancel_rolling(self, set_name: str) -> dict[str, Any]:
        self.store.get_set(set_name)
        latest = self.store.latest_rolling_upgrade(set_name)
        if latest is None or latest.status != "RollingForward":
            raise InvalidInput(f"scale set {set_name} has no rolling upgrade in progress")
        self.store.request_cancel(latest.id)
        if not driver_alive(latest):
            # nobody is driving it (the process died): it stops here
            latest = self.store.update_rolling_upgrade(
                self.store.get_rolling_upgrade(latest.id), status="Cancelled",
                end_time=self.service.engine.now(),
                detail={**latest.detail, "cancel": "no batch was in flight"})
        return rolling_status(self.store.get_rolling_upgrade(latest.id))

    def latest_status(self, set_name: str) -> dict[str, Any]:
        self.store.get_set(set_name)
        latest = self.store.latest_rolling_upgrade(set_name)
        if latest is None:
            raise InvalidInput(f"scale set {set_name} has had no rolling upgrade")
        return rolling_status(latest)

    async def _roll(self, set_name: str, upgrade: RollingUpgradeRecord, *, surge: bool) -> RollingUpgradeRecord:
        rolling = validate(RollingUpgradePolicy, upgrade.policy)
        target = upgrade.target_generation
        upgraded: dict[int, bool] = {}  # instanceId (or its surge replacement) -> healthy
        attempted: set[int] = set()  # never tried twice within one upgrade
        successful = failed = 0
        batch_no = 0

        async def faulted(reason: str | None, progress: dict[str, int]) -> RollingUpgradeRecord:
            note = None
            failures = [i for i, healthy in upgraded.items() if not healthy]
            if rolling.rollback_failed_instances_on_policy_breach and failures and not surge:
                note = await self._rollback(set_name, failures)
            return self._end(self.store.get_rolling_upgrade(upgrade.id), "Faulted", reason,
                             progress=progress, rollback=note)

        while True:
            upgrade = self.store.get_rolling_upgrade(upgrade.id)
            if upgrade.last_action == "Cancel":
                return self._end(upgrade, "Cancelled", None,
                                 cancel="cancelled between batches: no batch was in flight")
            capacity = self.service.spec_of(self.store.get_set(set_name)).capacity
            members = await self._members(set_name)
            skip = frozenset(attempted)
            verdict = policy.next_batch(members, target=target, policy=rolling,
                                        capacity=capacity, skip=skip)
            pending_count = len(policy.pending(members, target, skip))
            if verdict.kind == "completed":
                return self._end(upgrade, "Completed", None,
                                 progress=_progress(successful, failed, 0, 0))
            if verdict.kind == "faulted":
                return await faulted(verdict.reason,
                                     _progress(successful, failed, 0, pending_count))
            batch_no += 1
            attempted.update(verdict.batch)
            batch = [i for i in self.store.list_instances(set_name)
                     if i.instance_id in verdict.batch]
            self.service.progress(f"{set_name}: batch {batch_no}: instances "
                                  f"{', '.join(str(i.instance_id) for i in batch)}"
                                  + (" (surge)" if surge else " (in place)"))
            upgrade = self.store.update_rolling_upgrade(
                upgrade, progress=_progress(successful, failed, len(batch),
                                            pending_count - len(batch)),
                detail={**upgrade.detail, "inFlight": [i.instance_id for i in batch],
                        # a surge batch's replacements get the ids from here on, in batch order
                        "firstNewId": self.store.get_set(set_name).next_instance_id})
            outcomes = await (self._surge_batch(set_name, batch) if surge
                              else self._apply(set_name, batch))
            for o in outcomes:
                upgraded[o.instance_id] = o.healthy
            ok = [o for o in outcomes if o.healthy]
            bad = [o for o in outcomes if not o.healthy]
            successful += len(ok)
            failed += len(bad)
            upgrade = self.store.get_rolling_upgrade(upgrade.id)
            batches = [*upgrade.detail.get("batches", []), {
                "batch": batch_no, "instances": list(verdict.batch),
                "succeeded": [o.instance_id for o in ok], "failed": [o.instance_id for o in bad]}]
            after = _progress(successful, failed, 0, pending_count - len(batch))
            upgrade = self.store.update_rolling_upgrade(
                upgrade, progress=after,
                detail={**upgrade.detail, "inFlight": [], "batches": batches})
            breach = policy.check_upgraded(
                [policy.Member(i, target, h) for i, h in upgraded.items()], rolling)
            if breach:
                return await faulted(breach, after)
            if self.store.get_rolling_upgrade(upgrade.id).last_action == "Cancel":
                return self._end(upgrade, "Cancelled", None,
                                 cancel=f"the in-flight batch {batch_no} was completed; "
                                        "no new batch was started")
            if rolling.pause_seconds > 0 and policy.pending(await self._members(set_name),
                                                            target, frozenset(attempted)):
                self.service.progress(f"{set_name}: pausing {rolling.pause_time_between_batches}")
                await self.service.clock.sleep(rolling.pause_seconds)

    async def _finish_surge_batch(self, set_name: str, dead: RollingUpgradeRecord) -> None:
        """The surge batch a killed driver left in flight is finished as ``_surge_batch``
        would have: each replacement that exists is awaited; a healthy one takes its old
        instance's place (the old one goes), an unhealthy one goes. A replacement never
        made leaves its old instance for the next batches. Without this the resumed
        upgrade would count the replacements as upgraded instances and keep the old ones
        too: more instances than capacity for good."""
        old_ids = dead.detail.get("inFlight") or []
        first_new = dead.detail.get("firstNewId")
        if not dead.detail.get("surge") or not old_ids or not isinstance(first_new, int):
            return
        by_id = {i.instance_id: i for i in self.store.list_instances(set_name)}
        pairs = [(by_id.get(old), by_id[first_new + k]) for k, old in enumerate(old_ids)
                 if first_new + k in by_id and by_id[first_new + k].status == "active"]
        if not pairs:
            return
        self.service.progress(f"{set_name}: finishing the interrupted surge batch "
                              f"(instances {', '.join(str(i) for i in old_ids)})")
        final = await self.service.await_health(set_name, [new for _, new in pairs])
        going = [old if final[new.instance_id].state is HealthState.HEALTHY else new
                 for old, new in pairs]
        self.service.delete_instances_now(set_name, [i for i in going if i is not None])

    async def _members(self, set_name: str) -> list[policy.Member]:
        """Every instance with fresh health (one probe round over the running ones)."""
        instances = self.store.list_instances(set_name)
        states = await self.service.probe_round(set_name, instances)
        return [policy.Member(i.instance_id, i.model_generation,
                              states.get(i.instance_id) is HealthState.HEALTHY,
                              i.protect_from_scale_set_actions)
                for i in instances]

    async def _surge_batch(self, set_name: str, batch: Sequence[InstanceRecord]) -> list[Outcome]:
        """MaxSurge: new instances (new ids) on the latest model first; once healthy, the old
        ones of the batch go. A replacement that fails is removed; its old instance stays."""
        rec = self.store.get_set(set_name)
        spec = self.service.spec_of(rec)
        image = self.service.registry.verify(spec.model.image)
        key = self.service.ensure_admin_key(set_name)
        created = self.service.scale_out(spec, image, len(batch), key=key, generation=rec.generation)
        final = await self.service.await_health(set_name, created)
        outcomes: list[Outcome] = []
        for old, new in zip(batch, created, strict=True):
            ok = final[new.instance_id].state is HealthState.HEALTHY
            if ok:
                self.service.delete_instances_now(set_name, [old])
                outcomes.append(Outcome(new.instance_id, True))
            else:
                self.service.delete_instances_now(set_name, [new])
                outcomes.append(Outcome(old.instance_id, False, final[new.instance_id].state.value))
        return outcomes

    async def _rollback(self, set_name: str, ids: Sequence[int]) -> str:
        """Return the failed instances ``ids`` to their previous model, concurrently."""
        engine = self.service.engine

        async def one(inst: InstanceRecord) -> InstanceRecord:
            model = self._model(set_name, inst.prev_generation)
            image = self.service.registry.get(inst.prev_image)
            self.service.progress(f"{inst.name}: rolling back to generation "
                                  f"{inst.prev_generation} ({image.ref})")
            done = await ops.rollback(engine, inst, model=model, image=image)
            return self.service.record_boot(done)

        todo = [i for i in self.store.list_instances(set_name)
                if i.instance_id in ids and i.prev_generation]
        rolled = await asyncio.gather(*(one(i) for i in todo))
        final = await self.service.await_health(set_name, rolled)
        states = ", ".join(f"{set_name}-{i} {r.state.value}" for i, r in sorted(final.items()))
        return f"rolled back to the previous model: {states}"

    def _end(self, upgrade: RollingUpgradeRecord, status: str, error: str | None,
             *, progress: dict[str, int] | None = None, **notes: str | None) -> RollingUpgradeRecord:
        self.service.progress(f"{upgrade.set_name}: rolling upgrade {status}"
                              + (f": {error}" if error else ""))
        detail = {**upgrade.detail, **{k: v for k, v in notes.items() if v}}
        return self.store.update_rolling_upgrade(
            upgrade, status=status, error=error, end_time=self.service.engine.now(),
            detail=detail, progress=progress or upgrade.progress)

    def surge_shortage(self, set_name: str, spec: ScaleSetSpec | None = None) -> str | None:
        """What the host lacks for one surge batch (memory, pool space, addresses) of the
        set's recorded spec, or of ``spec`` about to be recorded; None if nothing."""
        if spec is None:
            spec = self.service.spec_of(self.store.get_set(set_name))
        batch = policy.batch_size(spec.upgrade_policy.rolling_upgrade_policy, spec.capacity)
        model = spec.model
        image = self.service.registry.get(model.image)
        need_mem = batch * model.memory_mib * 2**20
        have_mem = _mem_available()
        need_disk = batch * (sum(d.size_gib for d in model.data_disks) * 2**30
                             + image.virtual_size + 2**20)
        pool = self.service.hv.pool_info(self.service.engine.settings.pool)
        net = self.service.hv.network_info(model.network)
        free_ips = len(ops.free_addresses(self.service.engine, model.network))
        lacks = []
        if have_mem is not None and need_mem > have_mem:
            lacks.append(f"{need_mem // 2**20} MiB of memory ({have_mem // 2**20} MiB available)")
        if need_disk > pool.available_bytes:
            lacks.append(f"{need_disk // 2**20} MiB in pool {pool.name} "
                         f"({pool.available_bytes // 2**20} MiB free)")
        if batch > free_ips:
            lacks.append(f"{batch} free addresses on {net.name} ({free_ips} free)")
        return "; ".join(lacks) or None


def _surge_refusal(shortage: str) -> str:
    return (f"maxSurge needs {shortage}; free capacity or pass --allow-surge-fallback "
            "to upgrade in place")


def _progress(successful: int, failed: int, in_progress: int, pending: int) -> dict[str, int]:
    return {"successfulInstanceCount": successful, "failedInstanceCount": failed,
            "inProgressInstanceCount": in_progress, "pendingInstanceCount": pending}


def rolling_status(rec: RollingUpgradeRecord) -> dict[str, Any]:
    """The status document of `rolling-upgrade get-latest` (SPEC §2 names)."""
    return {
        "runningStatus": {"code": rec.status, "startTime": rec.start_time,
                          "lastAction": rec.last_action, "endTime": rec.end_time},
        "lastAction": rec.last_action,
        "progress": rec.progress,
        "error": {"message": rec.error} if rec.error else None,
        "policy": rec.policy,
        "targetGeneration": rec.target_generation,
        "thresholds": rec.detail.get("thresholds", []),
        "batches": rec.detail.get("batches", []),
        "inFlight": rec.detail.get("inFlight", []),
        "surge": rec.detail.get("surge", False),
        "surgeFallback": rec.detail.get("surgeFallback"),
        "cancel": rec.detail.get("cancel"),
        "rollback": rec.detail.get("rollback"),
    }


def driver_alive(rec: RollingUpgradeRecord) -> bool:
    return pid_alive(rec.detail.get("pid"))


def pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None

