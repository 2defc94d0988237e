"""A scale set's lifecycle: create, scale out and in, delete, delete instances, protect,
and power actions (start, stop, deallocate, restart).

Owned here: the order of steps of each, what each refuses before it takes the lock (bad
input changes nothing), and ``scale_out`` (allocate, provision and boot new instances;
all torn down if one fails), which rolling upgrades use for surge batches too.

Called by: api.routes, cli.vmss, usecases.controller, usecases.repairs, usecases.rolling,
usecases.updates
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Sequence

from orchestrator.engine import policy, steps
from orchestrator.engine.addresses import allocate
from orchestrator.errors import Gone, InvalidInput
from orchestrator.hypervisor.base import PowerState
from orchestrator.images import Image
from orchestrator.model import Model, ScaleSetSpec, check_set_name, validate
from orchestrator.store import InstanceRecord
from orchestrator.usecases import placement, removal, views, watch
from orchestrator.usecases.recovery import command
from orchestrator.usecases.session import Env, Session


async def check_placement(env: Env, model: Model) -> None:
    """Fail before anything is made if the network or pool of the implicit host does not
    exist (a registered host's were checked when it was added)."""
    for w in env.engine.hosts():
        if w.host.registered:
            continue
        network = w.host.network_for(model.network)
        try:
            await env.engine.io(w.hv.network_info, network)
        except Gone as exc:
            raise InvalidInput(f"network {network} does not exist in libvirt") from exc
        try:
            await env.engine.io(w.hv.pool_info, w.pool)
        except Gone as exc:
            raise InvalidInput(f"storage pool {w.pool} does not exist in libvirt") from exc


def _warn(env: Env, spec: ScaleSetSpec) -> None:
    for warning in spec.upgrade_policy.rolling_upgrade_policy.warnings():
        env.progress(f"warning: {warning}")


# --- create -------------------------------------------------------------------------------
async def create(env: Env, spec: ScaleSetSpec, *, wait: bool = True) -> views.SetView:
    check_set_name(spec.name)
    if env.store.find_set(spec.name) is not None:
        raise InvalidInput(f"scale set {spec.name} already exists (use `orch vmss update` or `apply`)")
    image = env.registry.verify(spec.model.image)
    image.check_memory(spec.model.memory_mib)
    await check_placement(env, spec.model)
    _warn(env, spec)
    async with command(env, spec.name, "create") as session:
        env.store.add_set(spec.name, spec.to_json_dict(), now=env.engine.now())
        try:
            created = await scale_out(session, image, spec.capacity, generation=1)
        except BaseException:
            env.progress(f"create of {spec.name} failed: removing what was made")
            await _delete_everything(session)
            raise
        env.store.add_event(spec.name, f"created with {spec.capacity} instances",
                            now=env.engine.now())
        if wait and created:
            await _wait_healthy(session, created, action="create")
    return views.show_set(env, spec.name)


async def scale_out(session: Session, image: Image, count: int, *, generation: int,
                    fault_domains: Sequence[str] = ()) -> list[InstanceRecord]:
    """Place ``count`` new instances of the set's model (``placement.choose_hosts``, within
    ``fault_domains`` if given), allocate them one after the other (addresses come from the
    store), then provision and boot them concurrently; on failure all are torn down.
    Returns them ``active``, booted, their health not yet awaited."""
    engine, store, model = session.engine, session.store, session.spec.model
    hosts = await placement.choose_hosts(session.env, session.set_name, model, image, count,
                                         fault_domains=fault_domains)
    made: list[InstanceRecord] = []
    try:
        for instance_id, host in zip(store.take_instance_ids(session.set_name, count), hosts,
                                     strict=True):
            made.append(await allocate(engine, set_name=session.set_name,
                                       instance_id=instance_id, model=model,
                                       generation=generation, image=image, host=host))
        for inst in made:
            where = f", host {inst.host}" if engine.fleet and engine.fleet.registered else ""
            session.progress(f"{inst.name}: creating ({inst.ip}, {image.ref}{where})")
        admin = session.key.public_openssh

        async def provision(inst: InstanceRecord) -> None:
            with engine.step(inst, "provision"):
                await steps.provision(engine, inst, model, image, admin_key=admin)

        results = await asyncio.gather(*(provision(i) for i in made), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        made = [watch.record_boot(store, engine.clock, i) for i in made]
    except BaseException:
        for inst in made:
            await removal.teardown_and_forget(session, inst)
        raise
    return [store.update_instance(i, status="active") for i in made]


async def _wait_healthy(session: Session, instances: Sequence[InstanceRecord], *,
                        action: str) -> None:
    final = await watch.await_health(watch.session_probe(session), instances)
    watch.raise_unhealthy(action, {i.name: final[i.instance_id] for i in instances},
                          console=session.env.console_tails)


# --- protection ----------------------------------------------------------------------------
async def protect(env: Env, set_name: str, instance_id: int, *, scale_in: bool | None,
                  set_actions: bool | None) -> views.InstanceView:
    """Instance protection: protectFromScaleIn, protectFromScaleSetActions."""
    env.instances(set_name, [instance_id])  # bad input is refused before the lock
    async with command(env, set_name, "protect") as session:
        inst = session.instances([instance_id])[0]
        changes: dict[str, bool] = {}
        if scale_in is not None:
            changes["protect_from_scale_in"] = scale_in
        if set_actions is not None:
            changes["protect_from_scale_set_actions"] = set_actions
        env.store.update_instance(inst, **changes)
    return await views.instance_view(env, set_name, instance_id, refresh=False)


# --- scale, delete -------------------------------------------------------------------------
async def scale(env: Env, set_name: str, capacity: int, *, wait: bool = True) -> views.SetView:
    spec = env.spec_of(set_name)
    new_spec = validate(ScaleSetSpec, {**spec.to_json_dict(), "capacity": capacity},
                        where="capacity")
    async with command(env, set_name, "scale") as session:
        await scale_to(session, new_spec, wait=wait)
    return views.show_set(env, set_name)


async def scale_to(session: Session, new_spec: ScaleSetSpec, *, wait: bool) -> None:
    """Bring the set's instance count to ``new_spec.capacity`` and record it."""
    env, store, name = session.env, session.store, session.set_name
    instances = store.list_instances(name)
    current, capacity = len(instances), new_spec.capacity

    def record(event: str | None) -> None:
        store.update_spec(name, new_spec.to_json_dict(), new_generation=False,
                          now=env.engine.now())
        session.changed_spec()
        if event:
            store.add_event(name, event, now=env.engine.now())

    if capacity > current:
        image = await session.image(session.spec.model.image)
        await check_placement(env, session.spec.model)
        created = await scale_out(session, image, capacity - current,
                                  generation=session.record.generation)
        record(f"scaled out {current} -> {capacity}")
        if wait:
            await _wait_healthy(session, created, action="scale")
    elif capacity < current:
        fd_of_host = placement.fault_domains(env)
        verdict = policy.scale_in_victims(
            instances, current - capacity, scale_in_policy=session.spec.scale_in_policy,
            fault_domain_of={i.instance_id: fd_of_host.get(i.host, i.host) for i in instances})
        if isinstance(verdict, str):
            raise InvalidInput(verdict)
        await removal.delete_now(session, [i for i in instances if i.instance_id in verdict])
        record(f"scaled in {current} -> {capacity}")
    else:
        record(None)


async def _delete_everything(session: Session) -> None:
    env = session.env
    await removal.delete_now(session, session.store.list_instances(session.set_name))
    session.store.delete_set(session.set_name)
    shutil.rmtree(env.key_path(session.set_name).parent, ignore_errors=True)
    env.lock_path(session.set_name).unlink(missing_ok=True)


async def delete(env: Env, set_name: str) -> None:
    env.store.get_set(set_name)
    async with command(env, set_name, "delete") as session:
        await _delete_everything(session)


async def delete_instances(env: Env, set_name: str, ids: Sequence[int]) -> views.SetView:
    spec = env.spec_of(set_name)
    env.instances(set_name, list(ids))  # bad input is refused before the lock
    async with command(env, set_name, "delete-instances") as session:
        victims = session.instances(list(ids))
        refusal = policy.refuse_protected(victims, "delete")
        if refusal:
            raise InvalidInput(refusal)
        await removal.delete_now(session, victims)
        remaining = len(session.store.list_instances(set_name))
        new_spec = validate(ScaleSetSpec, {**spec.to_json_dict(), "capacity": remaining})
        session.store.update_spec(set_name, new_spec.to_json_dict(), new_generation=False,
                                  now=env.engine.now())
    return views.show_set(env, set_name)


# --- power -------------------------------------------------------------------------------
_INTENT = {"stop": "stopped", "deallocate": "deallocated"}


async def power(env: Env, set_name: str, ids: Sequence[int], action: str, *,
                wait: bool = True) -> list[views.InstanceView]:
    """``start``, ``stop``, ``deallocate`` or ``restart`` the instances named."""
    env.instances(set_name, list(ids))  # bad input is refused before the lock
    async with command(env, set_name, action) as session:
        await power_now(session, list(ids), action, wait=wait)
    return await views.instance_views(env, set_name, list(ids))


async def power_now(session: Session, ids: list[int], action: str, *, wait: bool) -> None:
    engine, store = session.engine, session.store
    instances = session.instances(ids)
    refusal = policy.refuse_protected(instances, action)
    if refusal:
        raise InvalidInput(refusal)

    async def stop(inst: InstanceRecord) -> None:
        with engine.step(inst, "power-off"):
            await steps.power_off(engine, inst)

    if action in ("stop", "deallocate", "restart"):
        for inst in instances:
            session.progress(f"{inst.name}: stopping")
        await asyncio.gather(*(stop(i) for i in instances))
    booted: list[InstanceRecord] = []
    for inst in instances:
        inst = store.update_instance(inst, power_intent=_INTENT.get(action, "running"))
        if action in ("start", "restart"):
            hv = engine.at(inst.host).hv
            if await engine.io(hv.domain_state, inst.name) is not PowerState.RUNNING:
                session.progress(f"{inst.name}: starting")
                with engine.step(inst, "start"):
                    await steps.start(engine, inst)
                inst = watch.record_boot(store, engine.clock, inst)
            booted.append(inst)
        else:
            store.update_instance(inst, health={})
    if wait and booted:
        await _wait_healthy(session, booted, action=action)
