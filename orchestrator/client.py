"""The Python client of `orch serve`'s HTTP API (its routes: ``api.routes``, `GET /openapi.json`).

Owned here: ``Client`` (one typed method per route, over a synchronous ``httpx.Client``),
the records its methods return (pydantic models whose fields are the ``-o json`` keys, as
the server sends them; keys a newer server adds are kept in ``model_extra``, never refused),
waiting for an operation with a deadline, and the translation of every answer that is not
a success into the project's exception tree: an error body's ``code`` is the name of the
class in ``orchestrator.errors`` that is raised (401: ``Unauthorized``), a Failed operation
raises the class its error's code names, a server that cannot be reached raises
``EnvironmentProblem`` with a hint. No ``httpx`` exception leaves this module.

Long work (PUT, PATCH, DELETE of a set, the actions, scale, rolling upgrades, runCommand)
answers 202 with an operation. With ``wait=True`` (the default) a method polls it until it
ends, at most ``timeout`` seconds (``Timeout`` then; the work goes on in the server), and
returns its result as a record; with ``wait=False`` it returns the ``Operation`` at once, and
``Client.wait(operation)`` returns that same typed result later.

The seam for tests is ``transport`` (any ``httpx.BaseTransport``), the one httpx itself has:
the client stays the production client, only the bytes' way changes (in process to the ASGI
app, or a mock answering fixed bodies).

Called by: testing (and users' scripts: ``from orchestrator.client import Client``)
"""

from __future__ import annotations

import functools
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, Literal, Self, TypeVar, overload
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, PrivateAttr, TypeAdapter, ValidationError

from orchestrator import errors
from orchestrator.errors import (
    Conflict,
    EnvironmentProblem,
    InvalidInput,
    NotFound,
    OperationFailed,
    OrchError,
    SecurityError,
    Timeout,
    Unauthorized,
)

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_URL = "http://127.0.0.1:8717"
DEFAULT_WAIT_SECONDS = 3600.0  # an operation's deadline unless told (a big rolling upgrade)
RUN_COMMAND_SLACK_SECONDS = 60.0  # beyond a script's own timeout: SSH connect, scheduling
POLL_FIRST, POLL_MAX = 0.05, 2.0  # seconds between polls: quick ends seen quickly, then back off
API_VERSION = "orchestrator/v1"


# --- records ----------------------------------------------------------------------------------
class Record(BaseModel):
    """A JSON object of the API; its fields are the JSON keys. Keys the client does not know
    are kept (``model_extra``) so a newer server never breaks an older client."""

    model_config = ConfigDict(extra="allow", frozen=True)


class Image(Record):
    ref: str
    name: str
    version: str
    sha256: str
    path: str
    sizeMiB: float | None
    kernelBoot: bool
    sshUser: str | None
    healthCommand: str | None
    createdAt: str
    manifest: dict[str, Any]


class Host(Record):
    name: str
    uri: str
    faultDomain: str
    network: str | None
    pool: str
    state: str
    instances: int
    memoryMiBFree: int | None
    poolBytesFree: int | None
    addressesFree: int | None


class OrchestrationService(Record):
    serviceName: str
    serviceState: str


class ScaleSet(Record):
    """A set (`vmss show`): ``model`` and the policies are the declarative spec's JSON."""

    name: str
    generation: int
    capacity: int
    model: dict[str, Any]
    upgradePolicy: dict[str, Any]
    scaleInPolicy: str  # Default | NewestVM | OldestVM
    automaticRepairsPolicy: dict[str, Any]
    orchestrationServices: list[OrchestrationService]
    instanceCount: int
    latestModelInstances: int
    faultDomains: dict[str, int]
    createdAt: str
    updatedAt: str

    @property
    def image(self) -> str:
        """The model's image reference (``NAME:VERSION``)."""
        return str(self.model["image"])


class Instance(Record):
    """One instance as `list-instances` shows it."""

    instanceId: int
    name: str
    powerState: str
    healthState: str
    latestModelApplied: bool
    image: str
    modelGeneration: int
    ipAddress: str
    protectFromScaleIn: bool
    protectFromScaleSetActions: bool
    host: str
    faultDomain: str


class BootDiagnostics(Record):
    consoleTail: list[str]
    error: str | None


class InstanceView(Instance):
    """`get-instance-view`: the instance with its last probe, its identity and (not
    Healthy) its last console lines."""

    lastProbe: dict[str, Any] | None
    healthChangedAt: str | None
    macAddress: str
    network: str
    seedInstanceId: str
    hostKey: str
    createdAt: str
    bootDiagnostics: BootDiagnostics | None


class RunningStatus(Record):
    code: str  # RollingForward | Cancelled | Completed | Faulted
    startTime: str
    lastAction: str
    endTime: str | None


class RollingProgress(Record):
    successfulInstanceCount: int
    failedInstanceCount: int
    inProgressInstanceCount: int
    pendingInstanceCount: int


class RollingError(Record):
    message: str


class Batch(Record):
    batch: int
    instances: list[int]
    succeeded: list[int]
    failed: list[int]
    startTime: str | None
    endTime: str | None


class RollingUpgrade(Record):
    """`rolling-upgrade get-latest`."""

    runningStatus: RunningStatus
    lastAction: str
    progress: RollingProgress
    error: RollingError | None
    policy: dict[str, Any]
    targetGeneration: int
    thresholds: list[str]
    batches: list[Batch]
    inFlight: list[int]
    surge: bool
    surgeFallback: str | None
    cancel: str | None
    rollback: str | None


class CommandResult(Record):
    """`run-command invoke`: ``exitStatus`` None when the script was cut off."""

    exitStatus: int | None
    stdout: str
    stderr: str


class ErrorBody(Record):
    code: str
    message: str


class ControllerHealth(Record):
    running: bool
    passes: int
    lastPassAt: str | None
    lastProblems: list[str]


class Health(Record):
    status: str
    controller: ControllerHealth


class Operation(Record, Generic[R]):
    """Long work the server runs (``GET /v1/operations/{id}``). ``result`` is the JSON the
    operation ended with; ``Client.wait`` returns it as the record ``R`` of the method that
    started it (an operation fetched by id alone: the JSON as it is)."""

    id: str
    kind: str
    scaleSet: str
    status: str  # Running | Succeeded | Failed
    startedAt: str
    endedAt: str | None
    error: ErrorBody | None
    result: Any
    progress: list[str]
    # how ``result`` becomes ``R``: known to the method that started the operation
    _parse: Callable[[Any], Any] | None = PrivateAttr(default=None)

    @property
    def done(self) -> bool:
        return self.status != "Running"


def document(name: str, *, image: str, capacity: int, **spec: Any) -> dict[str, Any]:
    """The declarative document of a set (``vmss apply -f``; the body of ``apply``):
    ``spec`` holds the other spec keys as the file spells them (``upgradePolicy={...}``)."""
    return {"apiVersion": API_VERSION, "kind": "ScaleSet", "metadata": {"name": name},
            "spec": {"image": image, "capacity": capacity, **spec}}


def read_token(path: Path) -> str:
    """The token in a token file (``orch serve`` writes STATE_DIR/api-token)."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InvalidInput(f"token file {path} cannot be read: {exc.strerror}") from exc
    if not token:
        raise InvalidInput(f"token file {path} holds no token")
    return token


# --- answers into records and errors ----------------------------------------------------------
_CLASSES: dict[str, type[OrchError]] = {
    name: cls for name, cls in vars(errors).items()
    if isinstance(cls, type) and issubclass(cls, OrchError)}


def error_of(code: str, message: str, *, status: int | None = None,
             details: Sequence[str] = ()) -> OrchError:
    """The exception an error ``code`` names (a class of ``orchestrator.errors``); a code
    that names none (``PayloadTooLarge``, ``InternalError``, a newer server's) becomes the
    class its HTTP ``status`` means, the code kept in the message."""
    cls = _CLASSES.get(code)
    if cls is not None:
        return cls(message, details=details)
    return _by_status(status)(f"{code}: {message}", details=details)


def _by_status(status: int | None) -> type[OrchError]:
    if status == 401:
        return Unauthorized
    if status == 404:
        return NotFound
    if status == 409:
        return Conflict
    if status is not None and 400 <= status < 500:
        return InvalidInput  # 405, 413, 422: the request was refused; nothing changed
    if status in (502, 503, 504):
        return EnvironmentProblem
    return OperationFailed


def _error_of_answer(answer: httpx.Response) -> OrchError:
    try:
        body = answer.json()
        error = body["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        text = " ".join(answer.text.split())[:200]
        code = f"HTTP {answer.status_code}"
        message = text or answer.reason_phrase
    exc = error_of(code, message, status=answer.status_code)
    if answer.status_code == 401 and not isinstance(exc, SecurityError):
        exc = Unauthorized(exc.message)
    return exc


@functools.cache
def _adapter(kind: Any) -> TypeAdapter[Any]:
    return TypeAdapter(kind)  # built once per record type: building is the costly part


def _parser(kind: Any) -> Callable[[Any], Any]:
    """How an answer becomes ``kind`` (a record, or a list of them); an answer that is not
    one raises EnvironmentProblem (a server of another version, or not orch serve)."""
    def parse(value: Any) -> Any:
        try:
            return _adapter(kind).validate_python(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise EnvironmentProblem(
                f"the server's answer is not a {getattr(kind, '__name__', kind)}: "
                + (f"{where}: " if where else "") + first["msg"],
                hint="are the client and the server of the same orchestrator version?") from exc
    return parse


def _none(value: Any) -> None:
    return None


def _segment(value: str, what: str) -> str:
    """One path segment, quoted. A ``/`` is refused here: the server decodes ``%2F`` before
    it routes, so a name holding one would name another route."""
    if not isinstance(value, str) or value in ("", ".", "..") or "/" in value:
        raise InvalidInput(f"invalid {what} {value!r}: not one path segment")
    return quote(value, safe="")


def _ids(ids: Sequence[int] | None) -> dict[str, Any]:
    if ids is None:
        return {}
    if isinstance(ids, (str, bytes)) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise InvalidInput(f"instance ids must be integers, not {ids!r}")
    return {"instanceIds": list(ids)}


def _cert_refusal(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate check that failed under a connect error (httpx wraps httpcore's
    error, which wraps ssl's), if one did."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain is short; bounded all the same
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _verify(verify: bool | str | Path | ssl.SSLContext) -> bool | ssl.SSLContext:
    if isinstance(verify, (str, Path)):  # a CA bundle that signed the server's certificate
        try:
            return ssl.create_default_context(cafile=str(verify))
        except (OSError, ssl.SSLError) as exc:
            raise InvalidInput(f"CA file {verify} cannot be used: {exc}") from exc
    return verify


# --- the client -------------------------------------------------------------------------------
class Client:
    """A client of one `orch serve` (``url``: ``http://127.0.0.1:8717``), sending ``token``
    as the bearer token. ``timeout``: seconds one HTTP request may take (waiting for an
    operation has its own deadline); ``verify``: TLS verification, or the path of the CA
    file to trust; ``transport``: where requests go instead of the network (tests)."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0,
                 verify: bool | str | Path | ssl.SSLContext = True,
                 transport: httpx.BaseTransport | None = None) -> None:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise InvalidInput(f"invalid API URL {url!r}: {exc}") from exc
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise InvalidInput(f"invalid API URL {url!r}: expected http(s)://HOST:PORT")
        if not token or any(c.isspace() for c in token):
            raise InvalidInput("the API token must be one word (the token file's content)")
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url, timeout=timeout, verify=_verify(verify), transport=transport,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            follow_redirects=False)

    def __repr__(self) -> str:
        return f"Client({self.url!r})"  # never the token

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- HTTP --------------------------------------------------------------------------------
    def _send(self, method: str, path: str, *, body: Any = None,
              params: Mapping[str, str] | None = None) -> httpx.Response:
        """One request; any answer but 2xx raised as its error class. httpx's exceptions
        end here."""
        try:
            answer = self._http.request(method, path, json=body, params=params)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            refused = _cert_refusal(exc)
            if refused is not None:
                raise SecurityError(
                    f"{self.url}: the server's TLS certificate is not trusted: "
                    f"{refused.verify_message}",
                    hint="pass verify= the CA file that signed it") from exc
            raise EnvironmentProblem(
                f"cannot connect to {self.url}: {exc}",
                hint="is `orch serve` running and listening there (orch serve --listen "
                     "HOST:PORT)?") from exc
        except httpx.TimeoutException as exc:
            raise Timeout(f"{method} {path}: no answer from {self.url} in time "
                          f"({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise EnvironmentProblem(f"{method} {path} to {self.url} failed: {exc}",
                                     hint="did the server stop?") from exc
        except httpx.HTTPError as exc:  # e.g. a URL httpx cannot send to
            raise InvalidInput(f"{method} {path}: {exc}") from exc
        if not answer.is_success:
            raise _error_of_answer(answer)
        return answer

    def _json(self, method: str, path: str, *, body: Any = None,
              params: Mapping[str, str] | None = None) -> Any:
        answer = self._send(method, path, body=body, params=params)
        try:
            return answer.json()
        except ValueError as exc:
            raise EnvironmentProblem(
                f"{method} {path}: the answer of {self.url} is not JSON",
                hint="is this the URL of orch serve?") from exc

    def _get(self, kind: type[T] | Any, path: str, *,
             params: Mapping[str, str] | None = None) -> Any:
        return _parser(kind)(self._json("GET", path, params=params))

    def _start(self, method: str, path: str, body: Any,
               parse: Callable[[Any], R]) -> Operation[R]:
        """Send a request that answers 202 with an operation."""
        op: Operation[R] = _parser(Operation)(self._json(method, path, body=body))
        op._parse = parse
        return op

    def _finish(self, op: Operation[R], *, wait: bool, timeout: float | None) -> R | Operation[R]:
        return self.wait(op, timeout=timeout) if wait else op

    @staticmethod
    def _set_path(name: str, *rest: str) -> str:
        return "/".join(("/v1/scaleSets", _segment(name, "scale set name"), *rest))

    # --- the service -------------------------------------------------------------------------
    def healthz(self) -> Health:
        """``GET /healthz``: the server and its controller loop (needs no token)."""
        found: Health = self._get(Health, "/healthz")
        return found

    def metrics(self) -> str:
        """``GET /metrics``: Prometheus text."""
        return self._send("GET", "/metrics").text

    def openapi(self) -> dict[str, Any]:
        """``GET /openapi.json``: the OpenAPI document of the API."""
        found: dict[str, Any] = self._get(dict[str, Any], "/openapi.json")
        return found

    def operation(self, op_id: str) -> Operation[Any]:
        """``GET /v1/operations/{id}``."""
        found: Operation[Any] = self._get(Operation, f"/v1/operations/{_segment(op_id, 'id')}")
        return found

    def wait(self, operation: Operation[R], *, timeout: float | None = None) -> R:
        """Poll ``operation`` until it ends, at most ``timeout`` seconds (default
        ``DEFAULT_WAIT_SECONDS``); its result as the record of the method that started it.
        Failed: the error class its error code names, its last progress lines as
        ``details``. Timeout when the deadline passes (the operation goes on)."""
        limit = DEFAULT_WAIT_SECONDS if timeout is None else timeout
        deadline = time.monotonic() + limit
        pause = POLL_FIRST
        current: Operation[Any] = operation
        while not current.done:
            left = deadline - time.monotonic()
            if left <= 0:
                last = current.progress[-1] if current.progress else "no progress yet"
                raise Timeout(f"operation {current.id} ({current.kind} {current.scaleSet}) "
                              f"still running after {limit:g}s; last: {last}",
                              hint=f"it goes on in the server: GET /v1/operations/{current.id}")
            time.sleep(min(pause, left))
            pause = min(pause * 1.5, POLL_MAX)
            current = self.operation(operation.id)
        if current.status != "Succeeded":
            error = current.error or ErrorBody(code="OperationFailed",
                                               message=f"operation ended {current.status}")
            raise error_of(error.code, error.message, details=current.progress[-20:])
        if operation._parse is None:
            return current.result  # type: ignore[no-any-return]  # fetched by id: JSON as is
        result: R = operation._parse(current.result)
        return result

    # --- images and hosts --------------------------------------------------------------------
    def images(self) -> list[Image]:
        found: list[Image] = self._get(list[Image], "/v1/images")
        return found

    def hosts(self) -> list[Host]:
        found: list[Host] = self._get(list[Host], "/v1/hosts")
        return found

    # --- scale sets --------------------------------------------------------------------------
    def scale_sets(self) -> list[ScaleSet]:
        found: list[ScaleSet] = self._get(list[ScaleSet], "/v1/scaleSets")
        return found

    def scale_set(self, name: str) -> ScaleSet:
        found: ScaleSet = self._get(ScaleSet, self._set_path(name))
        return found

    @overload
    def apply(self, document: Mapping[str, Any], *, wait: Literal[True] = ...,
              timeout: float | None = ...) -> ScaleSet: ...
    @overload
    def apply(self, document: Mapping[str, Any], *, wait: Literal[False],
              timeout: float | None = ...) -> Operation[ScaleSet]: ...
    def apply(self, document: Mapping[str, Any], *, wait: bool = True,
              timeout: float | None = None) -> ScaleSet | Operation[ScaleSet]:
        """``PUT /v1/scaleSets/{metadata.name}``: `vmss apply` of one document (see
        ``document``): creates the set or brings it to the document."""
        try:
            name = document["metadata"]["name"]
        except (KeyError, TypeError) as exc:
            raise InvalidInput("the document has no metadata.name") from exc
        op = self._start("PUT", self._set_path(name), dict(document), _parser(ScaleSet))
        return self._finish(op, wait=wait, timeout=timeout)

    @overload
    def update(self, name: str, spec_patch: Mapping[str, Any], *, wait: Literal[True] = ...,
               timeout: float | None = ...) -> ScaleSet: ...
    @overload
    def update(self, name: str, spec_patch: Mapping[str, Any], *, wait: Literal[False],
               timeout: float | None = ...) -> Operation[ScaleSet]: ...
    def update(self, name: str, spec_patch: Mapping[str, Any], *, wait: bool = True,
               timeout: float | None = None) -> ScaleSet | Operation[ScaleSet]:
        """``PATCH /v1/scaleSets/{name}``: `vmss update` with a JSON merge patch of the
        spec (``{"image": "tiny:2"}``; a null removes a key)."""
        op = self._start("PATCH", self._set_path(name), dict(spec_patch), _parser(ScaleSet))
        return self._finish(op, wait=wait, timeout=timeout)

    @overload
    def delete(self, name: str, *, wait: Literal[True] = ...,
               timeout: float | None = ...) -> None: ...
    @overload
    def delete(self, name: str, *, wait: Literal[False],
               timeout: float | None = ...) -> Operation[None]: ...
    def delete(self, name: str, *, wait: bool = True,
               timeout: float | None = None) -> Operation[None] | None:
        """``DELETE /v1/scaleSets/{name}``: the set and everything it owns."""
        op = self._start("DELETE", self._set_path(name), None, _none)
        return self._finish(op, wait=wait, timeout=timeout)

    @overload
    def scale(self, name: str, capacity: int, *, wait: Literal[True] = ...,
              timeout: float | None = ...) -> ScaleSet: ...
    @overload
    def scale(self, name: str, capacity: int, *, wait: Literal[False],
              timeout: float | None = ...) -> Operation[ScaleSet]: ...
    def scale(self, name: str, capacity: int, *, wait: bool = True,
              timeout: float | None = None) -> ScaleSet | Operation[ScaleSet]:
        """``POST .../scale``: `vmss scale --new-capacity`."""
        op = self._start("POST", self._set_path(name, "scale"), {"capacity": capacity},
                         _parser(ScaleSet))
        return self._finish(op, wait=wait, timeout=timeout)

    # --- virtual machines --------------------------------------------------------------------
    def instances(self, name: str, *, refresh: bool = True) -> list[Instance]:
        """``GET .../virtualMachines``; ``refresh=False`` shows what is recorded without
        probing health first (quick, for polling)."""
        found: list[Instance] = self._get(list[Instance], self._set_path(name, "virtualMachines"),
                                          params=None if refresh else {"refresh": "false"})
        return found

    def instance(self, name: str, instance_id: int) -> InstanceView:
        """``GET .../virtualMachines/{id}``: `get-instance-view`."""
        found: InstanceView = self._get(InstanceView, self._set_path(
            name, "virtualMachines", str(int(instance_id))))
        return found

    def _action(self, name: str, action: str,
                ids: Sequence[int] | None) -> Operation[list[Instance]]:
        return self._start("POST", self._set_path(name, action), _ids(ids),
                           _parser(list[Instance]))

    @overload
    def manual_upgrade(self, name: str, ids: Sequence[int], *, wait: Literal[True] = ...,
                       timeout: float | None = ...) -> list[Instance]: ...
    @overload
    def manual_upgrade(self, name: str, ids: Sequence[int], *, wait: Literal[False],
                       timeout: float | None = ...) -> Operation[list[Instance]]: ...
    def manual_upgrade(self, name: str, ids: Sequence[int], *, wait: bool = True,
                       timeout: float | None = None
                       ) -> list[Instance] | Operation[list[Instance]]:
        """``POST .../manualupgrade``: `update-instances`, the latest model onto ``ids``."""
        return self._finish(self._action(name, "manualupgrade", ids), wait=wait,
                            timeout=timeout)

    @overload
    def reimage(self, name: str, ids: Sequence[int] | None = ..., *, all_disks: bool = ...,
                wait: Literal[True] = ..., timeout: float | None = ...) -> list[Instance]: ...
    @overload
    def reimage(self, name: str, ids: Sequence[int] | None = ..., *, all_disks: bool = ...,
                wait: Literal[False], timeout: float | None = ...
                ) -> Operation[list[Instance]]: ...
    def reimage(self, name: str, ids: Sequence[int] | None = None, *, all_disks: bool = False,
                wait: bool = True, timeout: float | None = None
                ) -> list[Instance] | Operation[list[Instance]]:
        """``POST .../reimage`` (``all_disks``: ``reimageall``, the data disks too);
        ``ids`` None: every instance."""
        action = "reimageall" if all_disks else "reimage"
        return self._finish(self._action(name, action, ids), wait=wait, timeout=timeout)

    @overload
    def start(self, name: str, ids: Sequence[int] | None = ..., *, wait: Literal[True] = ...,
              timeout: float | None = ...) -> list[Instance]: ...
    @overload
    def start(self, name: str, ids: Sequence[int] | None = ..., *, wait: Literal[False],
              timeout: float | None = ...) -> Operation[list[Instance]]: ...
    def start(self, name: str, ids: Sequence[int] | None = None, *, wait: bool = True,
              timeout: float | None = None) -> list[Instance] | Operation[list[Instance]]:
        """``POST .../start``; ``ids`` None: every instance."""
        return self._finish(self._action(name, "start", ids), wait=wait, timeout=timeout)

    @overload
    def power_off(self, name: str, ids: Sequence[int] | None = ..., *,
                  wait: Literal[True] = ..., timeout: float | None = ...) -> list[Instance]: ...
    @overload
    def power_off(self, name: str, ids: Sequence[int] | None = ..., *, wait: Literal[False],
                  timeout: float | None = ...) -> Operation[list[Instance]]: ...
    def power_off(self, name: str, ids: Sequence[int] | None = None, *, wait: bool = True,
                  timeout: float | None = None) -> list[Instance] | Operation[list[Instance]]:
        """``POST .../poweroff`` (`vmss stop`); ``ids`` None: every instance."""
        return self._finish(self._action(name, "poweroff", ids), wait=wait, timeout=timeout)

    @overload
    def restart(self, name: str, ids: Sequence[int] | None = ..., *,
                wait: Literal[True] = ..., timeout: float | None = ...) -> list[Instance]: ...
    @overload
    def restart(self, name: str, ids: Sequence[int] | None = ..., *, wait: Literal[False],
                timeout: float | None = ...) -> Operation[list[Instance]]: ...
    def restart(self, name: str, ids: Sequence[int] | None = None, *, wait: bool = True,
                timeout: float | None = None) -> list[Instance] | Operation[list[Instance]]:
        """``POST .../restart``; ``ids`` None: every instance."""
        return self._finish(self._action(name, "restart", ids), wait=wait, timeout=timeout)

    @overload
    def deallocate(self, name: str, ids: Sequence[int] | None = ..., *,
                   wait: Literal[True] = ..., timeout: float | None = ...) -> list[Instance]: ...
    @overload
    def deallocate(self, name: str, ids: Sequence[int] | None = ..., *, wait: Literal[False],
                   timeout: float | None = ...) -> Operation[list[Instance]]: ...
    def deallocate(self, name: str, ids: Sequence[int] | None = None, *, wait: bool = True,
                   timeout: float | None = None) -> list[Instance] | Operation[list[Instance]]:
        """``POST .../deallocate``; ``ids`` None: every instance."""
        return self._finish(self._action(name, "deallocate", ids), wait=wait, timeout=timeout)

    @overload
    def delete_instances(self, name: str, ids: Sequence[int], *, wait: Literal[True] = ...,
                         timeout: float | None = ...) -> ScaleSet: ...
    @overload
    def delete_instances(self, name: str, ids: Sequence[int], *, wait: Literal[False],
                         timeout: float | None = ...) -> Operation[ScaleSet]: ...
    def delete_instances(self, name: str, ids: Sequence[int], *, wait: bool = True,
                         timeout: float | None = None) -> ScaleSet | Operation[ScaleSet]:
        """``POST .../delete``: `delete-instances` (the capacity goes down with them)."""
        op = self._start("POST", self._set_path(name, "delete"), _ids(ids), _parser(ScaleSet))
        return self._finish(op, wait=wait, timeout=timeout)

    @overload
    def run_command(self, name: str, instance_id: int, script: str, *,
                    timeout: float = ..., wait: Literal[True] = ...) -> CommandResult: ...
    @overload
    def run_command(self, name: str, instance_id: int, script: str, *,
                    timeout: float = ..., wait: Literal[False]) -> Operation[CommandResult]: ...
    def run_command(self, name: str, instance_id: int, script: str, *, timeout: float = 300.0,
                    wait: bool = True) -> CommandResult | Operation[CommandResult]:
        """``POST .../virtualMachines/{id}/runCommand``: run ``script`` in the instance
        over SSH, cut off after ``timeout`` seconds (which also bounds the wait, plus
        ``RUN_COMMAND_SLACK_SECONDS``). A script that exits non-zero is a result, not an
        error: see ``exitStatus``."""
        op = self._start("POST", self._set_path(name, "virtualMachines",
                                                str(int(instance_id)), "runCommand"),
                         {"script": script, "timeout": timeout}, _parser(CommandResult))
        return self._finish(op, wait=wait, timeout=timeout + RUN_COMMAND_SLACK_SECONDS)

    # --- rolling upgrades --------------------------------------------------------------------
    @overload
    def os_rolling_upgrade(self, name: str, *, wait: Literal[True] = ...,
                           timeout: float | None = ...) -> RollingUpgrade: ...
    @overload
    def os_rolling_upgrade(self, name: str, *, wait: Literal[False],
                           timeout: float | None = ...) -> Operation[RollingUpgrade]: ...
    def os_rolling_upgrade(self, name: str, *, wait: bool = True, timeout: float | None = None
                           ) -> RollingUpgrade | Operation[RollingUpgrade]:
        """``POST .../osRollingUpgrade``: `rolling-upgrade start` (Faulted: OperationFailed)."""
        op = self._start("POST", self._set_path(name, "osRollingUpgrade"), None,
                         _parser(RollingUpgrade))
        return self._finish(op, wait=wait, timeout=timeout)

    def cancel_rolling_upgrade(self, name: str) -> RollingUpgrade:
        """``POST .../rollingUpgrades/cancel``: stop after the batch in flight."""
        found: RollingUpgrade = _parser(RollingUpgrade)(self._json(
            "POST", self._set_path(name, "rollingUpgrades", "cancel")))
        return found

    def latest_rolling_upgrade(self, name: str) -> RollingUpgrade:
        """``GET .../rollingUpgrades/latest`` (NotFound: the set never rolled)."""
        found: RollingUpgrade = self._get(RollingUpgrade,
                                          self._set_path(name, "rollingUpgrades", "latest"))
        return found


__all__ = [
    "Batch", "BootDiagnostics", "Client", "CommandResult", "ControllerHealth", "ErrorBody",
    "Health", "Host", "Image", "Instance", "InstanceView", "Operation", "OrchestrationService",
    "Record", "RollingError", "RollingProgress", "RollingUpgrade", "RunningStatus", "ScaleSet",
    "document", "error_of", "read_token",
]
