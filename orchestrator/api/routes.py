"""The routes of the HTTP API (Azure's operation names), each one use case.

Owned here: the paths, their request bodies (pydantic models, in the OpenAPI document),
what each checks before it answers (names, ids, bodies, the set and instances existing, a
new model's image registered and given its memory, the set's lock being free, libvirt
answering: bad input gets 400/404, a busy set 409, libvirt down 503, and none changes
anything) and which use case it calls. Reads answer 200 with the CLI's ``-o json`` form; long work answers 202 with the
operation (``Location: /v1/operations/{id}``), whose result is that form.

Every route is a plain function: FastAPI runs it on a worker thread, where ``call`` gives it
an ``Env`` and an event loop of its own, as a CLI command has.

Called by: api.app
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal, TypeVar, get_args

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.convertors import Convertor, register_url_convertor

from orchestrator import locks, metrics
from orchestrator.api.app import Backend
from orchestrator.api.operations import OPERATION_ID_LENGTH, Operation, call
from orchestrator.cli import render
from orchestrator.errors import Conflict, InvalidInput, NotFound
from orchestrator.model import (
    MAX_CAPACITY,
    MAX_INSTANCE_ID,
    ScaleSetDocument,
    ScaleSetSpec,
    check_set_name,
    instance_id_of,
    merge_patch,
    validate,
    with_default_network,
)
from orchestrator.usecases import controller as controller_mod
from orchestrator.usecases import hosts, placement, rolling, sets, updates, views
from orchestrator.usecases.session import Env, lock_is_free

T = TypeVar("T")
router = APIRouter()
OWN_PASS_WAIT = 30.0  # seconds a write waits for this server's controller pass on its set

InstanceId = Annotated[int, Field(ge=0, le=MAX_INSTANCE_ID, strict=True)]
# `{id}` in the paths, as the API names them; a string here, checked as the CLI checks an id
InstanceIdParam = Annotated[str, Path(alias="id", description="An instance id: 0 to 999999999.")]
OperationIdParam = Annotated[str, Path(alias="id", description="An operation id: 32 hex digits.")]


class _Body(BaseModel):
    # strict: "1" is no instance id and "5" no timeout, as on the command line
    model_config = ConfigDict(extra="forbid", strict=True)


class InstanceIds(_Body):
    """The instances an action is for; omitted: every instance (not for manualupgrade and
    delete, which must name them)."""

    instanceIds: list[InstanceId] | None = Field(default=None, min_length=1,
                                                 max_length=MAX_CAPACITY)


class Capacity(_Body):
    capacity: int = Field(ge=0, le=MAX_CAPACITY, strict=True)


class RunCommand(_Body):
    script: str = Field(min_length=1, max_length=65536)
    timeout: float = Field(default=300, ge=1, le=86400)


Action = Literal["manualupgrade", "reimage", "reimageall", "start", "poweroff", "restart",
                 "deallocate", "delete"]


class _ActionConvertor(Convertor[str]):
    """``{action:action}`` matches the actions only: another word after a set's name is no
    route (404), and the 405 of a route beside it names only that route's methods."""

    regex = "|".join(get_args(Action))

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("action", _ActionConvertor())
POWER_ACTIONS = {"start": "start", "poweroff": "stop", "restart": "restart",
                 "deallocate": "deallocate"}


# the refusals a route may answer besides FastAPI's own (app.openapi_document describes them
# all with the error shape): long work checks the lock and asks libvirt first
LONG_WORK: dict[int | str, dict[str, Any]] = {409: {}, 503: {}}
ASKS_LIBVIRT: dict[int | str, dict[str, Any]] = {503: {}}


def backend_of(request: Request) -> Backend:
    backend: Backend = request.app.state.backend
    return backend


def _read(request: Request, work: Callable[[Env], Coroutine[Any, Any, T]], *,
          scope: str | None = None) -> T:
    return call(backend_of(request).opener, work, scope=scope)


def _name(name: str) -> str:
    check_set_name(name)
    return name


def _instance_id(value: str) -> int:
    iid = instance_id_of(value)
    if iid is None:
        raise InvalidInput(f"invalid instance id {value!r}: expected a non-negative integer")
    return iid


def _accepted(op: Operation) -> JSONResponse:
    return JSONResponse(op.as_json(), status_code=202,
                        headers={"Location": f"/v1/operations/{op.id}"})


def _start(request: Request, name: str, kind: str,
           work: Callable[[Env], Coroutine[Any, Any, T]], result: Callable[[T], Any], *,
           check: Callable[[Env], None] | None = None, must_exist: bool = True,
           locked: bool = True) -> JSONResponse:
    """Check what can be checked now (the set exists, ``check``, its lock is free unless
    the work does not take it: ``locked``), then start ``work`` as an operation and answer
    202."""
    backend = backend_of(request)

    async def precheck(env: Env) -> None:
        if must_exist:
            env.store.get_set(name)  # NotFound: 404
        if check is not None:
            check(env)
        if locked:
            await _lock_free_soon(env, name)
        await _reachable(env)

    call(backend.opener, precheck, scope=name)
    return _accepted(backend.operations.start(kind=kind, scale_set=name, work=work,
                                              result=result))


async def _lock_free_soon(env: Env, name: str) -> None:
    """Conflict (409) if the set's lock is held; held by this server's own controller pass
    (which holds each set's lock for the seconds its pass over the set takes), waited for
    up to ``OWN_PASS_WAIT`` seconds first: the server should not refuse a call for itself."""
    deadline = time.monotonic() + OWN_PASS_WAIT
    own_pass = f"{os.getpid()} ({controller_mod.PURPOSE})"
    while not lock_is_free(env, name):
        if locks.holder(env.lock_path(name)) != own_pass or time.monotonic() > deadline:
            raise Conflict(f"scale set {name} is busy: another operation holds its lock",
                           hint="wait for it, or see GET /v1/scaleSets/{name}/rollingUpgrades"
                                "/latest")
        await asyncio.sleep(0.05)


async def _reachable(env: Env) -> None:
    """HypervisorUnavailable (503) now rather than an operation that fails with it: one
    question to every host, as a read asks (with hosts registered, one that does not answer
    is the use case's to handle, as the CLI's)."""
    await placement.list_domains(env)


def _check_model(env: Env, spec: ScaleSetSpec, *, where: str) -> None:
    """What ``updates.apply`` refuses before it takes the lock, checked before the 202 (bad
    input in a body changes nothing): a new network, an image not registered, too little
    memory for the image. ``where``: how the body names the model (``body.spec``)."""
    current = env.spec_of(spec.name) if env.store.find_set(spec.name) else None
    if current is not None and spec.model.network != current.model.network:
        raise InvalidInput(f"{where}.network: changing the network of an existing scale set "
                           "is not supported")
    if current is not None and spec.model == current.model:
        return
    try:
        image = env.registry.get(spec.model.image)
    except NotFound as exc:
        raise InvalidInput(f"{where}.image: {exc.message}") from exc
    try:
        image.check_memory(spec.model.memory_mib)
    except InvalidInput as exc:
        raise InvalidInput(f"{where}.memoryMiB: {exc.message}") from exc


def _document_schema() -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ScaleSetDocument"}}}}}


def components() -> dict[str, Any]:
    """The schemas of the OpenAPI document that FastAPI does not make itself: the PUT body,
    ScaleSetDocument, and the models it refers to, each exactly as pydantic gives it (FastAPI
    would drop its ``default: null``s)."""
    schema = ScaleSetDocument.model_json_schema(by_alias=True,
                                                ref_template="#/components/schemas/{model}")
    return {**schema.pop("$defs"), "ScaleSetDocument": schema}


# --- the service ------------------------------------------------------------------------------
@router.get("/healthz", tags=["service"])
def healthz(request: Request) -> dict[str, Any]:
    """Whether the server runs, and its controller loop (no token needed)."""
    return {"status": "ok", "controller": backend_of(request).controller.as_json()}


@router.get("/metrics", tags=["service"], response_class=Response)
def get_metrics(request: Request) -> Response:
    """Prometheus metrics of every set, as the metrics file has them."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def text(env: Env) -> bytes:
        return generate_latest(metrics.registry_of(env.store))

    return Response(_read(request, text), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/operations/{id}", tags=["service"], response_model=None,
            responses={200: {"content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/Operation"}}}}})
def get_operation(request: Request, op_id: OperationIdParam) -> dict[str, Any]:
    """An operation this server started: status Running, Succeeded or Failed, its error
    (code, message), its result and its last progress lines."""
    if len(op_id) != OPERATION_ID_LENGTH or not all(c in "0123456789abcdef" for c in op_id):
        raise InvalidInput(f"invalid operation id {op_id!r}")
    return backend_of(request).operations.get(op_id).as_json()


# --- images and hosts -------------------------------------------------------------------------
@router.get("/v1/images", tags=["images"])
def list_images(request: Request) -> list[dict[str, Any]]:
    async def listed(env: Env) -> list[dict[str, Any]]:
        return [render.image_json(i) for i in env.registry.list()]
    return _read(request, listed)


@router.get("/v1/hosts", tags=["hosts"])
def list_hosts(request: Request) -> list[dict[str, Any]]:
    async def listed(env: Env) -> list[dict[str, Any]]:
        return [render.host_json(v) for v in await hosts.list_hosts(env)]
    return _read(request, listed)


# --- scale sets -------------------------------------------------------------------------------
@router.get("/v1/scaleSets", tags=["scaleSets"])
def list_sets(request: Request) -> list[dict[str, Any]]:
    async def listed(env: Env) -> list[dict[str, Any]]:
        return [render.set_json(v) for v in views.list_sets(env)]
    return _read(request, listed)


@router.get("/v1/scaleSets/{name}", tags=["scaleSets"])
def get_set(request: Request, name: str) -> dict[str, Any]:
    name = _name(name)

    async def shown(env: Env) -> dict[str, Any]:
        return render.set_json(views.show_set(env, name))
    return _read(request, shown, scope=name)


@router.put("/v1/scaleSets/{name}", tags=["scaleSets"], status_code=202, responses=LONG_WORK,
            openapi_extra=_document_schema())
def put_set(request: Request, name: str,
            # described by hand (_document_schema): validated below as `vmss apply -f` does
            document: Annotated[dict[str, Any], Body(include_in_schema=False)]) -> JSONResponse:
    """`vmss apply` of one document whose metadata.name is {name}: creates the set, or
    brings it to the document (capacity by scaling, the model by its upgrade policy)."""
    name = _name(name)
    # the lab's network, as `vmss apply -f` takes it
    with_default_network(document, os.environ.get("ORCH_NETWORK"))
    spec = validate(ScaleSetDocument, document, where="body").to_spec()
    if spec.name != name:
        raise InvalidInput(f"body.metadata.name: {spec.name} is not the name in the path, "
                           f"{name}")
    return _start(request, name, "apply", lambda env: updates.apply(env, spec),
                  render.set_json, must_exist=False,
                  check=lambda env: _check_model(env, spec, where="body.spec"))


@router.patch("/v1/scaleSets/{name}", tags=["scaleSets"], status_code=202,
             responses=LONG_WORK)
def patch_set(request: Request, name: str,
              changes: Annotated[dict[str, Any], Body(
                  examples=[{"image": "tiny:2"}, {"upgradePolicy": {"mode": "Rolling"}}])]
              ) -> JSONResponse:
    """`vmss update` with a partial spec of the declarative file (a JSON merge patch of
    its `spec`, e.g. {"image": "tiny:2"}); a capacity in it scales the set."""
    name = _name(name)

    def patched(env: Env) -> ScaleSetSpec:
        document = ScaleSetDocument.of(env.spec_of(name))
        document["spec"] = merge_patch(document["spec"], changes)
        try:
            return validate(ScaleSetDocument, document).to_spec()
        except InvalidInput as exc:
            # the body is the document's spec: name the body's keys, not the document's
            where, sep, rest = exc.message.partition("spec")
            raise InvalidInput(f"body{rest}" if sep and not where
                               else f"body: {exc.message}") from exc

    def check(env: Env) -> None:
        spec = patched(env)
        if spec == env.spec_of(name):
            raise InvalidInput("body: nothing to update: the set already has this spec")
        _check_model(env, spec, where="body")

    # merged again when the work starts: into the set as it is then, so that a change that
    # ended since the check is kept, not undone
    return _start(request, name, "update", lambda env: updates.apply(env, patched(env)),
                  render.set_json, check=check)


@router.delete("/v1/scaleSets/{name}", tags=["scaleSets"], status_code=202,
             responses=LONG_WORK)
def delete_set(request: Request, name: str) -> JSONResponse:
    """Delete the set and everything it owns."""
    name = _name(name)
    return _start(request, name, "delete", lambda env: sets.delete(env, name),
                  lambda _: None)


@router.get("/v1/scaleSets/{name}/virtualMachines", tags=["virtualMachines"],
            responses=ASKS_LIBVIRT)
def list_instances(request: Request, name: str,
                   refresh: Annotated[bool, Query()] = True) -> list[dict[str, Any]]:
    """The instances; ``refresh`` (default, as `list-instances`) probes their health
    first, ``refresh=false`` shows what is recorded (quick: for polling)."""
    name = _name(name)

    async def listed(env: Env) -> list[dict[str, Any]]:
        return [render.instance_json(v)
                for v in await views.instance_views(env, name, refresh=refresh)]
    return _read(request, listed, scope=name)


@router.get("/v1/scaleSets/{name}/virtualMachines/{id}", tags=["virtualMachines"],
            responses=ASKS_LIBVIRT)
def get_instance(request: Request, name: str, instance_id: InstanceIdParam) -> dict[str, Any]:
    """The instance view (`get-instance-view`)."""
    name, iid = _name(name), _instance_id(instance_id)

    async def shown(env: Env) -> dict[str, Any]:
        return render.instance_detail_json(await views.instance_view(env, name, iid))
    return _read(request, shown, scope=name)


@router.post("/v1/scaleSets/{name}/virtualMachines/{id}/runCommand",
             tags=["virtualMachines"], status_code=202, responses=ASKS_LIBVIRT)
def run_command(request: Request, name: str, instance_id: InstanceIdParam,
                body: RunCommand) -> JSONResponse:
    """Run a script in the instance over SSH; the result has exitStatus, stdout, stderr."""
    name, iid = _name(name), _instance_id(instance_id)

    def check(env: Env) -> None:
        env.instances(name, [iid])

    # runs beside whatever holds the set's lock, as `run-command invoke` does
    return _start(request, name, "runCommand",
                  lambda env: views.run_command(env, name, iid, body.script,
                                                timeout=body.timeout),
                  render.command_json, check=check, locked=False)


@router.post("/v1/scaleSets/{name}/scale", tags=["scaleSets"], status_code=202,
             responses=LONG_WORK)
def scale(request: Request, name: str, body: Capacity) -> JSONResponse:
    """`vmss scale --new-capacity`."""
    name = _name(name)
    return _start(request, name, "scale", lambda env: sets.scale(env, name, body.capacity),
                  render.set_json)


@router.post("/v1/scaleSets/{name}/osRollingUpgrade", tags=["rollingUpgrades"],
             status_code=202, responses=LONG_WORK)
def os_rolling_upgrade(request: Request, name: str) -> JSONResponse:
    """`rolling-upgrade start`: the latest model in batches; the result is the upgrade's
    status (a Faulted upgrade ends the operation Failed)."""
    name = _name(name)

    async def start(env: Env) -> Any:
        upgrade = await rolling.start(env, name)
        rolling.raise_if_faulted(upgrade, console=env.console_tails)
        return upgrade

    return _start(request, name, "osRollingUpgrade", start, render.rolling_json,
                  check=lambda env: rolling.check_mode(env, name))


@router.post("/v1/scaleSets/{name}/rollingUpgrades/cancel", tags=["rollingUpgrades"])
def cancel_rolling_upgrade(request: Request, name: str) -> dict[str, Any]:
    """Stop the running rolling upgrade after its in-flight batch."""
    name = _name(name)

    async def cancel(env: Env) -> dict[str, Any]:
        return render.rolling_json(await rolling.cancel(env, name))
    return _read(request, cancel, scope=name)


@router.get("/v1/scaleSets/{name}/rollingUpgrades/latest", tags=["rollingUpgrades"])
def latest_rolling_upgrade(request: Request, name: str) -> dict[str, Any]:
    """`rolling-upgrade get-latest`: status, progress and batches."""
    name = _name(name)

    async def latest(env: Env) -> dict[str, Any]:
        return render.rolling_json(rolling.status(env, name))
    return _read(request, latest, scope=name)


@router.post("/v1/scaleSets/{name}/{action:action}", tags=["virtualMachines"], status_code=202,
             responses=LONG_WORK)
def instance_action(request: Request, name: str, action: Action,
                    body: InstanceIds | None = None) -> JSONResponse:
    """An action on instances: manualupgrade (`update-instances`), reimage, reimageall
    (reimage with the data disks), start, poweroff, restart, deallocate, delete
    (`delete-instances`)."""
    name = _name(name)
    ids = None if body is None or body.instanceIds is None else list(body.instanceIds)
    if action in ("manualupgrade", "delete") and not ids:
        raise InvalidInput(f"body: {action} needs instanceIds")

    def check(env: Env) -> None:
        env.instances(name, ids)  # NotFound: 404, before the lock

    work: Callable[[Env], Coroutine[Any, Any, Any]]
    result: Callable[[Any], Any]
    if action == "manualupgrade":
        work, result = (lambda env: updates.update_instances(env, name, ids)), _instances
    elif action in ("reimage", "reimageall"):
        work, result = (lambda env: updates.reimage(
            env, name, ids, all_disks=action == "reimageall")), _instances
    elif action == "delete":
        assert ids is not None
        work, result = (lambda env: sets.delete_instances(env, name, ids)), render.set_json
    else:
        def power(env: Env) -> Coroutine[Any, Any, Any]:
            every = ids if ids is not None else [i.instance_id for i in env.instances(name, None)]
            return sets.power(env, name, every, POWER_ACTIONS[action])
        work, result = power, _instances
    return _start(request, name, action, work, result, check=check)


def _instances(listed: list[views.InstanceView]) -> list[dict[str, Any]]:
    return [render.instance_json(v) for v in listed]
