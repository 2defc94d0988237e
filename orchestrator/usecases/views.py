"""What the user sees of sets, instances and the journal, as typed records built from the
store and libvirt's observed state (``cli.render`` turns them into output).

Owned here: ``SetView``, ``InstanceView``, ``OperationView``/``StepView``, how an
instance's power and health are shown (the store's intent statuses, deallocated, a domain
not running has no health), and the read-only use cases ``show_set``, ``list_sets``,
``list_instances`` (one probe round first), ``instance_view`` (with the last console lines
of an instance that is not Healthy), ``operations``,
``endpoint`` and ``run_command``.

Called by: api.routes, cli.render, cli.vmss, usecases.repairs, usecases.sets,
usecases.updates
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from orchestrator import ssh
from orchestrator.engine.health import HealthState
from orchestrator.errors import OperationFailed
from orchestrator.hypervisor.base import PowerState
from orchestrator.model import ScaleSetSpec, validate
from orchestrator.store import InstanceRecord, SetRecord
from orchestrator.usecases import bootdiag, placement, watch
from orchestrator.usecases.session import Env

_INTENT_STATUSES = ("creating", "deleting", "reimaging", "reimaging-all-disks")


@dataclass(frozen=True)
class SetView:
    name: str
    generation: int
    spec: ScaleSetSpec
    instance_count: int
    latest_model_instances: int
    created_at: str
    updated_at: str
    fault_domain_counts: dict[str, int]  # the set's instances per fault domain
    services: dict[str, str]  # orchestration service -> Running | Suspended | NotRunning


@dataclass(frozen=True)
class InstanceView:
    instance_id: int
    name: str
    power_state: str
    health_state: str
    latest_model_applied: bool
    image: str
    model_generation: int
    ip_address: str
    protect_from_scale_in: bool
    protect_from_scale_set_actions: bool
    host: str
    fault_domain: str
    # shown by get-instance-view only
    last_probe: dict[str, Any] | None
    health_changed_at: str | None
    mac_address: str
    network: str
    seed_instance_id: str
    host_key: str
    created_at: str
    # get-instance-view of an instance that is not Healthy only: its last console lines
    boot_diagnostics: bootdiag.BootDiagnostics | None = None


@dataclass(frozen=True)
class StepView:
    instance: str
    step: str
    status: str
    started_at: str
    ended_at: str | None
    error: str | None


@dataclass(frozen=True)
class OperationView:
    id: int
    kind: str
    status: str
    pid: int | None
    started_at: str
    ended_at: str | None
    error: str | None
    steps: tuple[StepView, ...]


AUTOMATIC_REPAIRS = "AutomaticRepairs"
SERVICES = (AUTOMATIC_REPAIRS,)
RUNNING, SUSPENDED, NOT_RUNNING = "Running", "Suspended", "NotRunning"


def service_state(env: Env, set_name: str, spec: ScaleSetSpec) -> str:
    """An orchestration service's state for a set (only ``AutomaticRepairs`` exists):
    NotRunning while its policy is off, else Running unless suspended."""
    if not spec.automatic_repairs_policy.enabled:
        return NOT_RUNNING
    rec = env.store.service(set_name, AUTOMATIC_REPAIRS)
    return rec.state if rec is not None else RUNNING


def set_view(env: Env, rec: SetRecord) -> SetView:
    instances = env.store.list_instances(rec.name)
    spec = validate(ScaleSetSpec, rec.spec)
    fd_of = placement.fault_domains(env)
    counts: dict[str, int] = {}
    for inst in instances:
        fd = fd_of.get(inst.host, inst.host)
        counts[fd] = counts.get(fd, 0) + 1
    return SetView(fault_domain_counts=dict(sorted(counts.items())), name=rec.name,
                   generation=rec.generation, spec=spec, instance_count=len(instances),
                   services={s: service_state(env, rec.name, spec) for s in SERVICES},
                   latest_model_instances=sum(1 for i in instances
                                              if i.model_generation == rec.generation),
                   created_at=rec.created_at, updated_at=rec.updated_at)


def show_set(env: Env, set_name: str) -> SetView:
    return set_view(env, env.store.get_set(set_name))


def list_sets(env: Env) -> list[SetView]:
    return [set_view(env, r) for r in env.store.list_sets()]


def _instance_view(rec: SetRecord, inst: InstanceRecord, state: PowerState, *,
                   fault_domain: str, reachable: bool) -> InstanceView:
    if not reachable:  # its host does not answer: nothing is known of it
        power = "unknown"
    elif inst.status in _INTENT_STATUSES:
        power = inst.status.removesuffix("-all-disks")
    elif state is PowerState.STOPPED and inst.power_intent == "deallocated":
        power = "deallocated"
    else:
        power = state.value
    health = inst.health.get("state") or HealthState.UNKNOWN.value
    if state is not PowerState.RUNNING:
        health = HealthState.UNKNOWN.value
    return InstanceView(
        instance_id=inst.instance_id, name=inst.name, power_state=power, health_state=health,
        latest_model_applied=inst.model_generation == rec.generation, image=inst.image,
        model_generation=inst.model_generation, ip_address=inst.ip,
        protect_from_scale_in=inst.protect_from_scale_in,
        protect_from_scale_set_actions=inst.protect_from_scale_set_actions,
        host=inst.host, fault_domain=fault_domain, last_probe=inst.health.get("last"), health_changed_at=inst.health.get("changedAt"),
        mac_address=inst.mac, network=inst.network, seed_instance_id=inst.seed_instance_id,
        host_key=inst.host_key_public, created_at=inst.created_at)


async def instance_views(env: Env, set_name: str, ids: list[int] | None = None, *,
                         refresh: bool = False) -> list[InstanceView]:
    """The instances named (all: ``ids`` None); with ``refresh``, one probe round over the
    set's running instances first."""
    rec = env.store.get_set(set_name)
    env.instances(set_name, ids)  # NotFound before anything is probed
    observed = await placement.observe_power(env)
    power = observed.states
    if refresh:
        probe = watch.Probe.of(env, set_name)
        if probe is not None:
            await watch.probe_round(probe, env.store.list_instances(set_name), power=power)
    fd_of = placement.fault_domains(env)
    return [_instance_view(rec, i, power.get(i.name, PowerState.MISSING),
                           fault_domain=fd_of.get(i.host, i.host),
                           reachable=i.host not in observed.unreachable)
            for i in env.instances(set_name, ids)]


async def list_instances(env: Env, set_name: str) -> list[InstanceView]:
    return await instance_views(env, set_name, refresh=True)


async def instance_view(env: Env, set_name: str, instance_id: int, *,
                        refresh: bool = True) -> InstanceView:
    """One instance; one that is not Healthy with its last console lines (read from its host
    then: a Healthy one's view stays one probe and no download)."""
    view = (await instance_views(env, set_name, [instance_id], refresh=refresh))[0]
    if view.health_state == HealthState.HEALTHY.value:
        return view
    inst = env.instances(set_name, [instance_id])[0]
    diag = await bootdiag.diagnostics(env, inst, reachable=view.power_state != "unknown")
    return dataclasses.replace(view, boot_diagnostics=diag)


def operations(env: Env, set_name: str) -> list[OperationView]:
    store = env.store
    store.get_set(set_name)
    return [OperationView(
        id=op.id, kind=op.kind, status=op.status, pid=op.pid, started_at=op.started_at,
        ended_at=op.ended_at, error=op.detail.get("error"),
        steps=tuple(StepView(st.instance, st.step, st.status, st.started_at, st.ended_at,
                             st.error) for st in store.list_steps(op.id)))
        for op in store.list_operations(set_name)]


# --- commands in the guest -------------------------------------------------------------------
async def endpoint(env: Env, set_name: str, instance_id: int) -> ssh.Endpoint:
    """Where to reach an instance over SSH (host key pinned); it must be running."""
    inst = env.instances(set_name, [instance_id])[0]
    state = await env.engine.io(env.engine.at(inst.host).hv.domain_state, inst.name)
    if state is not PowerState.RUNNING:
        raise OperationFailed(f"{inst.name} is {state.value}; start it first")
    probe = watch.Probe.of(env, set_name)
    if probe is None:  # the set's image is gone: the default port and root still work
        spec = env.spec_of(set_name)
        key = env.admin_key(set_name)
        return ssh.Endpoint(host=inst.ip, port=spec.model.health_probe.port, user="root",
                            client_key=key.private_openssh, host_key=inst.host_key_public)
    return probe.endpoint(inst)


@dataclass(frozen=True)
class CommandResult:
    exit_status: int | None
    stdout: str
    stderr: str


async def run_command(env: Env, set_name: str, instance_id: int, script: str, *,
                      timeout: float = 300.0) -> CommandResult:
    result = await ssh.run_command(await endpoint(env, set_name, instance_id), script,
                                   connect_timeout=15.0, command_timeout=timeout)
    return CommandResult(result.exit_status, result.stdout, result.stderr)
