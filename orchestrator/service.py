"""Use cases of the scale-set controller: create, apply, scale, delete, power actions,
instance views, run-command and ssh.

Owned here: the order of steps of each use case, the per-set lock, waiting for health after
an action, and the JSON views (``set_view``, ``instance_view``) that the CLI renders.
Called by ``cli`` only; calls ``engine.operations`` (per-instance steps), ``engine.health``
(probing), ``images``, ``store`` and the ``Hypervisor`` seam.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from orchestrator import locks, ssh
from orchestrator.clock import Clock
from orchestrator.engine import operations as ops
from orchestrator.engine.health import (
    HealthRecord,
    HealthState,
    Prober,
    ProbeSettings,
    ProbeTarget,
    probe_once,
    record_from_json,
    record_to_json,
    wait_settled,
)
from orchestrator.errors import (
    Gone,
    InvalidInput,
    NotFound,
    OperationFailed,
    OrchError,
)
from orchestrator.hypervisor.base import Hypervisor, PowerState
from orchestrator.images import Image, Registry
from orchestrator.model import Model, ScaleSetSpec, check_set_name, validate
from orchestrator.store import InstanceRecord, SetRecord, Store

Progress = Callable[[str], None]
_T = TypeVar("_T")


@dataclass
class Service:
    engine: ops.Engine
    prober: Prober
    progress: Progress = lambda line: None
    # run once a set's lock is taken, before the command acts: the CLI wires the
    # reconciler's resume here, so the next command on a set finishes interrupted work
    after_lock: Callable[[str], None] | None = None

    @property
    def store(self) -> Store:
        return self.engine.store

    @property
    def hv(self) -> Hypervisor:
        return self.engine.hv

    @property
    def registry(self) -> Registry:
        return self.engine.registry

    @property
    def clock(self) -> Clock:
        return self.engine.clock

    @property
    def state_dir(self) -> Path:
        return self.engine.settings.state_dir

    # --- locking and keys ----------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, set_name: str, kind: str, *, resume: bool = True) -> Iterator[None]:
        """One writer per set: a second concurrent writer gets Conflict (exit 3). Each locked
        section is an operation in the journal (``operations``): ``running`` with our pid
        while it lasts, then ``succeeded`` or ``failed``; one left ``running`` by a killed
        process is found by the reconciler (its pid is gone) and marked ``interrupted``."""
        path = self.state_dir / "locks" / f"{set_name}.lock"
        with locks.hold(path, what=f"scale set {set_name}", purpose=kind):
            op_id = self.store.start_operation(set_name, kind, {}, now=self.engine.now())
            outer, self.engine.operation_id = self.engine.operation_id, op_id
            try:
                if resume and self.after_lock is not None:
                    self.after_lock(set_name)
                yield
            except BaseException as exc:
                error = exc.one_line() if isinstance(exc, OrchError) else type(exc).__name__
                with contextlib.suppress(Exception):  # a dead store must not hide the cause
                    self.store.end_operation(op_id, "failed", {"error": error},
                                             now=self.engine.now())
                raise
            finally:
                self.engine.operation_id = outer
            self.store.end_operation(op_id, "succeeded", {}, now=self.engine.now())

    def operations_view(self, set_name: str) -> list[dict[str, Any]]:
        self.store.get_set(set_name)
        return [{"id": op.id, "kind": op.kind, "status": op.status, "pid": op.pid,
                 "startedAt": op.started_at, "endedAt": op.ended_at,
                 "error": op.detail.get("error"),
                 "steps": [{"instance": st.instance, "step": st.step, "status": st.status,
                            "startedAt": st.started_at, "endedAt": st.ended_at,
                            "error": st.error} for st in self.store.list_steps(op.id)]}
                for op in self.store.list_operations(set_name)]

    def in_threads(self, step: str, fn: Callable[[InstanceRecord], _T],
                   instances: Sequence[InstanceRecord]) -> list[_T | Exception]:
        """Run ``fn`` on each instance in worker threads (libvirt connections are
        thread-safe, the store is not), each a journaled step whose start and end are
        written from this thread. Returns each result or the exception it raised."""
        if not instances:
            return []
        step_ids = [self.engine.open_step(inst, step) for inst in instances]

        def capture(inst: InstanceRecord) -> _T | Exception:
            try:
                return fn(inst)
            except Exception as exc:  # noqa: BLE001 - handed back to the caller, which decides
                return exc

        with ThreadPoolExecutor(max_workers=min(8, len(instances))) as pool:
            results = list(pool.map(capture, instances))
        for step_id, result in zip(step_ids, results, strict=True):
            self.engine.close_step(step_id, result if isinstance(result, Exception) else None)
        return results

    def _key_path(self, set_name: str) -> Path:
        return self.state_dir / "sets" / set_name / "id_ed25519"

    def admin_key(self, set_name: str) -> ssh.KeyPair:
        path = self._key_path(set_name)
        private = ssh.read_private_key(path)
        public = path.with_name(path.name + ".pub").read_text().strip()
        return ssh.KeyPair(private_openssh=private, public_openssh=public)

    def ensure_admin_key(self, set_name: str) -> ssh.KeyPair:
        path = self._key_path(set_name)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(path.parent, 0o700)
            ssh.write_private_key(path, ssh.generate_keypair(f"orchestrator {set_name}"))
        return self.admin_key(set_name)

    # --- lookups ---------------------------------------------------------------------------
    def spec_of(self, rec: SetRecord) -> ScaleSetSpec:
        return validate(ScaleSetSpec, rec.spec)

    def instances_of(self, set_name: str, ids: Sequence[int] | None) -> list[InstanceRecord]:
        all_instances = self.store.list_instances(set_name)
        if ids is None:
            return all_instances
        by_id = {i.instance_id: i for i in all_instances}
        missing = [str(i) for i in ids if i not in by_id]
        if missing:
            raise NotFound(f"scale set {set_name} has no instance {', '.join(missing)}")
        return [by_id[i] for i in dict.fromkeys(ids)]

    def probe_settings(self, model: Model, image: Image) -> ProbeSettings:
        hp = model.health_probe
        return ProbeSettings(
            command=hp.command or image.health_command,
            port=hp.port,
            interval_seconds=hp.interval_seconds,
            timeout_seconds=hp.timeout_seconds,
            number_of_probes=hp.number_of_probes,
            grace_period_seconds=hp.grace_period_seconds,
        )

    def _target(self, inst: InstanceRecord, *, port: int, user: str, key: ssh.KeyPair) -> ProbeTarget:
        return ProbeTarget(
            name=inst.name,
            endpoint=ssh.Endpoint(host=inst.ip, port=port, user=user,
                                  client_key=key.private_openssh,
                                  host_key=inst.host_key_public),
        )

    # --- create ------------------------------------------------------------------------------
    def create(self, spec: ScaleSetSpec, *, wait: bool = True) -> dict[str, Any]:
        check_set_name(spec.name)
        if self.store.find_set(spec.name) is not None:
            raise InvalidInput(f"scale set {spec.name} already exists (use `orch vmss update` or `apply`)")
        image = self.registry.verify(spec.model.image)
        image.check_memory(spec.model.memory_mib)
        self._check_placement(spec.model)
        for warning in spec.upgrade_policy.rolling_upgrade_policy.warnings():
            self.progress(f"warning: {warning}")
        with self.locked(spec.name, "create"):
            self.store.add_set(spec.name, spec.to_json_dict(), now=self.engine.now())
            try:
                key = self.ensure_admin_key(spec.name)
                created = self.scale_out(spec, image, spec.capacity, key=key, generation=1)
            except BaseException:
                self.progress(f"create of {spec.name} failed: removing what was made")
                self._delete_everything(spec.name)
                raise
            self.store.add_event(spec.name, f"created with {spec.capacity} instances",
                                 now=self.engine.now())
            if wait and created:
                self._wait_healthy(spec.name, created, action="create")
        return self.set_view(self.store.get_set(spec.name))

    def protect(self, set_name: str, instance_id: int, *, scale_in: bool | None,
                set_actions: bool | None) -> dict[str, Any]:
        """Instance protection, as Azure's protectFromScaleIn / protectFromScaleSetActions."""
        self.instances_of(set_name, [instance_id])  # bad input is refused before the lock
        with self.locked(set_name, "protect"):
            inst = self.instances_of(set_name, [instance_id])[0]
            changes: dict[str, bool] = {}
            if scale_in is not None:
                changes["protect_from_scale_in"] = scale_in
            if set_actions is not None:
                changes["protect_from_scale_set_actions"] = set_actions
            self.store.update_instance(inst, **changes)
        return self.instance_view(set_name, instance_id, refresh=False)

    def _check_placement(self, model: Model) -> None:
        """Fail before anything is made if the network or pool does not exist."""
        try:
            self.hv.network_info(model.network)
        except Gone as exc:
            raise InvalidInput(f"network {model.network} does not exist in libvirt") from exc
        try:
            self.hv.pool_info(self.engine.settings.pool)
        except Gone as exc:
            raise InvalidInput(
                f"storage pool {self.engine.settings.pool} does not exist in libvirt"
            ) from exc

    def scale_out(self, spec: ScaleSetSpec, image: Image, count: int, *, key: ssh.KeyPair,
                   generation: int) -> list[InstanceRecord]:
        """Allocate ``count`` new instances (one after the other: addresses come from the
        store), then provision and boot them concurrently; on failure all are torn down."""
        made: list[InstanceRecord] = []
        try:
            for instance_id in self.store.take_instance_ids(spec.name, count):
                made.append(ops.allocate(self.engine, set_name=spec.name,
                                         instance_id=instance_id, model=spec.model,
                                         generation=generation, image=image))
            for inst in made:
                self.progress(f"{inst.name}: creating ({inst.ip}, {image.ref})")
            results = self.in_threads(
                "provision", lambda i: ops.provision(self.engine, i, spec.model, image,
                                                     admin_key=key.public_openssh), made)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            made = [self.record_boot(i) for i in made]
        except BaseException:
            for inst in made:
                self.teardown_and_forget(inst)
            raise
        return [self.store.update_instance(i, status="active") for i in made]

    def record_boot(self, inst: InstanceRecord) -> InstanceRecord:
        health = record_to_json(HealthRecord.initial(self.clock.monotonic()), self.clock)
        return self.store.update_instance(inst, health=health)

    # --- health ------------------------------------------------------------------------------
    async def await_health(self, set_name: str,
                           instances: Sequence[InstanceRecord]) -> dict[int, HealthRecord]:
        """Probe ``instances`` until each is settled; their health is persisted as it
        changes. Returns the final record by instanceId."""
        if not instances:
            return {}
        spec = self.spec_of(self.store.get_set(set_name))
        image = self.registry.get(spec.model.image)
        settings = self.probe_settings(spec.model, image)
        key = self.admin_key(set_name)
        by_name = {i.name: i for i in instances}
        targets = [self._target(i, port=settings.port, user=self._user_of(i), key=key)
                   for i in instances]
        records = {i.name: record_from_json(i.health, self.clock) for i in instances}
        started = self.clock.monotonic()

        def persist(name: str, rec: HealthRecord) -> None:
            inst = self.store.find_instance(set_name, by_name[name].instance_id)
            if inst is not None:
                self.store.update_instance(inst, health=record_to_json(rec, self.clock))

        def on_change(name: str, rec: HealthRecord) -> None:
            persist(name, rec)
            self.progress(f"{name}: {rec.state.value}"
                          f" after {self.clock.monotonic() - started:.1f}s")

        final = await wait_settled(targets, records, prober=self.prober, settings=settings,
                                   clock=self.clock, on_change=on_change)
        for name, rec in final.items():
            persist(name, rec)
        return {by_name[name].instance_id: rec for name, rec in final.items()}

    def _wait_healthy(self, set_name: str, instances: Sequence[InstanceRecord], *, action: str) -> None:
        final = asyncio.run(self.await_health(set_name, instances))
        raise_unhealthy(action, {i.name: final[i.instance_id] for i in instances})

    def _user_of(self, inst: InstanceRecord) -> str:
        try:
            return self.registry.get(inst.image).ssh_user
        except NotFound:
            return "root"

    async def probe_round(self, set_name: str,
                          instances: Sequence[InstanceRecord]) -> dict[int, HealthState]:
        """One concurrent probe round over those of ``instances`` that run; their health is
        persisted. Instances not running are absent from the result."""
        spec = self.spec_of(self.store.get_set(set_name))
        try:
            image = self.registry.get(spec.model.image)
        except NotFound:
            return {}
        running = [i for i in instances if i.status == "active"
                   and self.hv.domain_state(i.name) is PowerState.RUNNING]
        if not running:
            return {}
        settings = self.probe_settings(spec.model, image)
        key = self.admin_key(set_name)
        targets = [self._target(i, port=settings.port, user=self._user_of(i), key=key)
                   for i in running]
        records = {i.name: record_from_json(i.health, self.clock) for i in running}
        final = await probe_once(targets, records, prober=self.prober, settings=settings,
                                 clock=self.clock)
        states: dict[int, HealthState] = {}
        for inst in running:
            if inst.name in final:
                fresh = self.store.find_instance(set_name, inst.instance_id)
                if fresh is not None:
                    self.store.update_instance(
                        fresh, health=record_to_json(final[inst.name], self.clock))
                states[inst.instance_id] = final[inst.name].state
        return states

    def refresh_health(self, set_name: str) -> None:
        """One probe round over the set's running instances (for views)."""
        asyncio.run(self.probe_round(set_name, self.store.list_instances(set_name)))

    # --- scale, delete ---------------------------------------------------------------------
    def scale(self, set_name: str, capacity: int, *, wait: bool = True) -> dict[str, Any]:
        rec = self.store.get_set(set_name)
        spec = self.spec_of(rec)
        new_spec = validate(ScaleSetSpec, {**spec.to_json_dict(), "capacity": capacity},
                            where="capacity")
        with self.locked(set_name, "scale"):
            instances = self.store.list_instances(set_name)
            current = len(instances)
            if capacity > current:
                image = self.registry.verify(spec.model.image)
                self._check_placement(spec.model)
                key = self.ensure_admin_key(set_name)
                created = self.scale_out(spec, image, capacity - current, key=key,
                                          generation=rec.generation)
                self.store.update_spec(set_name, new_spec.to_json_dict(), new_generation=False,
                                       now=self.engine.now())
                self.store.add_event(set_name, f"scaled out {current} -> {capacity}",
                                     now=self.engine.now())
                if wait:
                    self._wait_healthy(set_name, created, action="scale")
            elif capacity < current:
                victims = self._scale_in_victims(spec, instances, current - capacity)
                self.delete_instances_now(set_name, victims)
                self.store.update_spec(set_name, new_spec.to_json_dict(), new_generation=False,
                                       now=self.engine.now())
                self.store.add_event(set_name, f"scaled in {current} -> {capacity}",
                                     now=self.engine.now())
            else:
                self.store.update_spec(set_name, new_spec.to_json_dict(), new_generation=False,
                                       now=self.engine.now())
        return self.set_view(self.store.get_set(set_name))

    def _scale_in_victims(self, spec: ScaleSetSpec, instances: list[InstanceRecord],
                          count: int) -> list[InstanceRecord]:
        candidates = [i for i in instances
                      if not i.protect_from_scale_in and not i.protect_from_scale_set_actions]
        if spec.scale_in_policy == "OldestVM":
            candidates.sort(key=lambda i: (i.created_at, i.instance_id))
        else:  # Default and NewestVM: highest instanceIds first
            candidates.sort(key=lambda i: i.instance_id, reverse=True)
        if len(candidates) < count:
            raise InvalidInput(
                f"cannot remove {count} instances: only {len(candidates)} are not protected from scale-in"
            )
        return candidates[:count]

    def teardown_and_forget(self, inst: InstanceRecord) -> None:
        with self.engine.step(inst, "teardown"):
            self._teardown(inst)
        self.store.delete_instance(inst.set_name, inst.instance_id)

    def _teardown(self, inst: InstanceRecord) -> None:
        problems = ops.teardown(self.engine, inst)
        if problems:
            raise OperationFailed(f"{inst.name}: could not remove everything: {'; '.join(problems)}")

    def delete_instances_now(self, set_name: str, victims: Sequence[InstanceRecord]) -> None:
        """Tear the victims down concurrently, then forget those fully removed."""
        marked = [self.store.update_instance(v, status="deleting") for v in victims]
        for inst in marked:
            self.progress(f"{inst.name}: deleting")
        failures: list[str] = []
        for inst, result in zip(marked, self.in_threads("teardown", self._teardown, marked),
                                strict=True):
            if isinstance(result, OrchError):
                failures.append(result.message)
            elif isinstance(result, BaseException):
                raise result
            else:
                self.store.delete_instance(inst.set_name, inst.instance_id)
        if failures:
            raise OperationFailed("; ".join(failures))

    def _delete_everything(self, set_name: str) -> None:
        self.delete_instances_now(set_name, self.store.list_instances(set_name))
        self.store.delete_set(set_name)
        shutil.rmtree(self._key_path(set_name).parent, ignore_errors=True)
        (self.state_dir / "locks" / f"{set_name}.lock").unlink(missing_ok=True)

    def delete(self, set_name: str) -> None:
        self.store.get_set(set_name)
        with self.locked(set_name, "delete"):
            self._delete_everything(set_name)

    def delete_instances(self, set_name: str, ids: Sequence[int]) -> dict[str, Any]:
        rec = self.store.get_set(set_name)
        spec = self.spec_of(rec)
        self.instances_of(set_name, ids)  # bad input is refused before the lock
        with self.locked(set_name, "delete-instances"):
            victims = self.instances_of(set_name, ids)
            protected = [str(v.instance_id) for v in victims if v.protect_from_scale_set_actions]
            if protected:
                raise InvalidInput(f"instances {', '.join(protected)} are protected from scale set actions")
            self.delete_instances_now(set_name, victims)
            remaining = len(self.store.list_instances(set_name))
            new_spec = validate(ScaleSetSpec, {**spec.to_json_dict(), "capacity": remaining})
            self.store.update_spec(set_name, new_spec.to_json_dict(), new_generation=False,
                                   now=self.engine.now())
        return self.set_view(self.store.get_set(set_name))

    # --- power -------------------------------------------------------------------------------
    def power(self, set_name: str, ids: Sequence[int], action: str, *, wait: bool = True) -> list[dict[str, Any]]:
        """``start``, ``stop``, ``deallocate`` or ``restart`` the instances named."""
        self.instances_of(set_name, ids)  # bad input is refused before the lock
        with self.locked(set_name, action):
            instances = self.instances_of(set_name, ids)
            protected = [str(i.instance_id) for i in instances if i.protect_from_scale_set_actions]
            if protected and action != "start":
                raise InvalidInput(f"instances {', '.join(protected)} are protected from scale set actions")
            booted: list[InstanceRecord] = []

            async def stop(inst: InstanceRecord) -> None:
                with self.engine.step(inst, "power-off"):
                    await ops.power_off(self.engine, inst.name)

            async def stop_all() -> None:
                await asyncio.gather(*(stop(i) for i in instances))

            if action in ("stop", "deallocate", "restart"):
                for inst in instances:
                    self.progress(f"{inst.name}: stopping")
                asyncio.run(stop_all())
            for inst in instances:
                intent = {"stop": "stopped", "deallocate": "deallocated"}.get(action, "running")
                inst = self.store.update_instance(inst, power_intent=intent)
                if action in ("start", "restart"):
                    if self.hv.domain_state(inst.name) is not PowerState.RUNNING:
                        self.progress(f"{inst.name}: starting")
                        with self.engine.step(inst, "start"):
                            self.hv.start(inst.name)
                        inst = self.record_boot(inst)
                    booted.append(inst)
                else:
                    inst = self.store.update_instance(inst, health={})
            if wait and booted:
                self._wait_healthy(set_name, booted, action=action)
        return [self.instance_view(set_name, i.instance_id, refresh=False) for i in instances]

    # --- commands in the guest ---------------------------------------------------------------
    def endpoint(self, set_name: str, instance_id: int) -> ssh.Endpoint:
        rec = self.store.get_set(set_name)
        spec = self.spec_of(rec)
        inst = self.instances_of(set_name, [instance_id])[0]
        state = self.hv.domain_state(inst.name)
        if state is not PowerState.RUNNING:
            raise OperationFailed(f"{inst.name} is {state.value}; start it first")
        key = self.admin_key(set_name)
        return ssh.Endpoint(host=inst.ip, port=spec.model.health_probe.port,
                            user=self._user_of(inst), client_key=key.private_openssh,
                            host_key=inst.host_key_public)

    def run_command(self, set_name: str, instance_id: int, script: str, *,
                    timeout: float = 300.0) -> dict[str, Any]:
        endpoint = self.endpoint(set_name, instance_id)
        result = asyncio.run(ssh.run_command(endpoint, script, connect_timeout=15.0,
                                             command_timeout=timeout))
        return {"exitStatus": result.exit_status, "stdout": result.stdout,
                "stderr": result.stderr}

    # --- views -------------------------------------------------------------------------------
    def set_view(self, rec: SetRecord) -> dict[str, Any]:
        spec = self.spec_of(rec)
        instances = self.store.list_instances(rec.name)
        data = spec.to_json_dict()
        return {
            "name": rec.name,
            "generation": rec.generation,
            "capacity": spec.capacity,
            "model": data["model"],
            "upgradePolicy": data["upgradePolicy"],
            "scaleInPolicy": data["scaleInPolicy"],
            "instanceCount": len(instances),
            "latestModelInstances": sum(1 for i in instances if i.model_generation == rec.generation),
            "createdAt": rec.created_at,
            "updatedAt": rec.updated_at,
        }

    def list_sets(self) -> list[dict[str, Any]]:
        return [self.set_view(r) for r in self.store.list_sets()]

    def list_instances(self, set_name: str, *, refresh: bool = True) -> list[dict[str, Any]]:
        rec = self.store.get_set(set_name)
        if refresh:
            self.refresh_health(set_name)
        return [self._instance_dict(rec, i) for i in self.store.list_instances(set_name)]

    def instance_view(self, set_name: str, instance_id: int, *, refresh: bool = True) -> dict[str, Any]:
        rec = self.store.get_set(set_name)
        self.instances_of(set_name, [instance_id])
        if refresh:
            self.refresh_health(set_name)
        inst = self.instances_of(set_name, [instance_id])[0]
        view = self._instance_dict(rec, inst)
        view["lastProbe"] = inst.health.get("last")
        view["healthChangedAt"] = inst.health.get("changedAt")
        view["macAddress"] = inst.mac
        view["network"] = inst.network
        view["seedInstanceId"] = inst.seed_instance_id
        view["hostKey"] = inst.host_key_public
        view["createdAt"] = inst.created_at
        return view

    def _instance_dict(self, rec: SetRecord, inst: InstanceRecord) -> dict[str, Any]:
        state = self.hv.domain_state(inst.name)
        if inst.status in ("creating", "deleting", "reimaging", "reimaging-all-disks"):
            power = inst.status.removesuffix("-all-disks")
        elif state is PowerState.STOPPED and inst.power_intent == "deallocated":
            power = "deallocated"
        else:
            power = state.value
        health = inst.health.get("state") or HealthState.UNKNOWN.value
        if state is not PowerState.RUNNING:
            health = HealthState.UNKNOWN.value
        return {
            "instanceId": inst.instance_id,
            "name": inst.name,
            "powerState": power,
            "healthState": health,
            "latestModelApplied": inst.model_generation == rec.generation,
            "image": inst.image,
            "modelGeneration": inst.model_generation,
            "ipAddress": inst.ip,
            "protectFromScaleIn": inst.protect_from_scale_in,
            "protectFromScaleSetActions": inst.protect_from_scale_set_actions,
        }


def raise_unhealthy(action: str, final: dict[str, HealthRecord]) -> None:
    """OperationFailed naming every instance of ``final`` that is not Healthy, if any."""
    bad = [n for n, r in final.items() if r.state is not HealthState.HEALTHY]
    if bad:
        detail = "; ".join(f"{n} {final[n].state.value}{_why(final[n])}" for n in bad)
        raise OperationFailed(f"{action}: {len(bad)} of {len(final)} instances not healthy: {detail}")


def _why(rec: HealthRecord) -> str:
    last = rec.last
    if last is None:
        return " (never answered)"
    if last.error:
        return f" ({last.error})"
    if last.exit_status is not None:
        return f" (health command exit {last.exit_status}: {last.output[:80]})"
    return ""
