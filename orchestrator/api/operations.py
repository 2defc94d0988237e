"""Long work of the HTTP API as operations, each run as a command of its own.

Owned here: ``Opener`` (how a call gets its collaborators: an ``Env`` with a store
connection and hypervisor connections of its own, closed when the call ends), ``call`` (one
use case run the way the CLI runs a command: one event loop, one ``Env``), ``Operation``
(the resource ``GET /v1/operations/{id}`` shows; its JSON schema, ``OPERATION_SCHEMA``, and
that of an error, ``ERROR_SCHEMA``) and ``Operations`` (starts each in a thread
of its own, keeps the last ones, says which still run when the server stops).

An operation is the API's handle on one use-case call; the set's journal (``vmss
list-operations``) records the same work as a CLI command would, under the same lock, so a
server stopped mid-operation leaves the journal exactly as a killed ``orch`` does: the
controller resumes it.

Called by: api.app, api.routes, api.serve, cli.serve
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from orchestrator import logs
from orchestrator.clock import iso
from orchestrator.errors import NotFound, OrchError
from orchestrator.usecases.session import Env, Progress

T = TypeVar("T")
OPERATION_ID_LENGTH = 32  # hex digits of ``secrets.token_hex(16)``
PROGRESS_LINES = 200  # the last progress lines an operation keeps
KEEP_ENDED = 500  # ended operations remembered (the oldest are forgotten first)


class Opener(Protocol):
    """Collaborators for one call, progress lines going to ``progress``."""

    def __call__(self, progress: Progress) -> contextlib.AbstractContextManager[Env]: ...


def call(opener: Opener, work: Callable[[Env], Coroutine[Any, Any, T]], *,
         progress: Progress = logs.progress, scope: str | None = None) -> T:
    """Run ``work`` as one command: its own ``Env`` and event loop (so that a blocking
    hypervisor or store call delays only this call), progress lines carrying ``scope``."""
    with opener(progress) as env:
        if scope is None:
            return asyncio.run(work(env))
        with logs.scope(scope):
            return asyncio.run(work(env))


def error_json(exc: BaseException) -> dict[str, str]:
    """``{"code", "message"}`` of an error: the exception tree's class name, one line."""
    if isinstance(exc, OrchError):
        return {"code": type(exc).__name__, "message": exc.one_line()}
    return {"code": "InternalError", "message": f"{type(exc).__name__}: {exc}"}


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["code", "message"], "additionalProperties": False,
    "properties": {
        "code": {"type": "string", "description": "The error's class, e.g. InvalidInput, "
                 "NotFound, Conflict, HypervisorUnavailable, OperationFailed."},
        "message": {"type": "string", "description": "One line, as the CLI prints it."}}}

# the JSON schema of ``Operation.as_json`` (the OpenAPI document's Operation)
OPERATION_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["id", "kind", "scaleSet", "status", "startedAt", "endedAt", "error", "result",
                 "progress"],
    "properties": {
        "id": {"type": "string", "pattern": f"^[0-9a-f]{{{OPERATION_ID_LENGTH}}}$"},
        "kind": {"type": "string", "description": "What was asked: apply, update, delete, "
                 "scale, osRollingUpgrade, runCommand or an instance action."},
        "scaleSet": {"type": "string"},
        "status": {"enum": ["Running", "Succeeded", "Failed"]},
        "startedAt": {"type": "string", "format": "date-time"},
        "endedAt": {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]},
        "error": {"anyOf": [ERROR_SCHEMA, {"type": "null"}]},
        "result": {"description": "Succeeded: what the CLI prints with -o json for the same "
                   "command (null for a deleted set)."},
        "progress": {"type": "array", "items": {"type": "string"},
                     "maxItems": PROGRESS_LINES, "description": "The last progress lines."}}}


@dataclass
class Operation:
    """One piece of long work started by an API call."""

    id: str
    kind: str
    scale_set: str
    started_at: str
    status: str = "Running"  # Running | Succeeded | Failed
    ended_at: str | None = None
    error: dict[str, str] | None = None
    result: Any = None
    progress: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=PROGRESS_LINES))
    done: threading.Event = field(default_factory=threading.Event)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "scaleSet": self.scale_set,
                "status": self.status, "startedAt": self.started_at, "endedAt": self.ended_at,
                "error": self.error, "result": self.result, "progress": list(self.progress)}


class Operations:
    """The operations of this server: started in threads, looked up by id."""

    def __init__(self, opener: Opener) -> None:
        self._opener = opener
        self._lock = threading.Lock()
        self._all: collections.OrderedDict[str, Operation] = collections.OrderedDict()
        self._threads: dict[str, threading.Thread] = {}

    def start(self, *, kind: str, scale_set: str,
              work: Callable[[Env], Coroutine[Any, Any, T]],
              result: Callable[[T], Any]) -> Operation:
        """Start ``work`` on a thread of its own; ``result`` turns what it returns into the
        operation's JSON result."""
        op = Operation(id=secrets.token_hex(OPERATION_ID_LENGTH // 2), kind=kind,
                       scale_set=scale_set, started_at=iso(datetime.now(UTC)))

        def progress(line: str) -> None:
            op.progress.append(line)
            logs.progress(line)

        def run() -> None:
            try:
                value = call(self._opener, work, progress=progress, scope=scale_set)
                op.result = result(value)
                op.status = "Succeeded"
            except BaseException as exc:  # noqa: BLE001 - the operation records any failure
                op.error = error_json(exc)
                op.status = "Failed"
                logs.warning(f"operation {op.id} ({kind} {scale_set}) failed: "
                             f"{op.error['message']}")
            finally:
                op.ended_at = iso(datetime.now(UTC))
                op.done.set()
                with self._lock:
                    self._threads.pop(op.id, None)

        thread = threading.Thread(target=run, name=f"operation-{kind}-{scale_set}", daemon=True)
        with self._lock:
            self._all[op.id] = op
            self._threads[op.id] = thread
            self._forget_old()
        thread.start()
        return op

    def _forget_old(self) -> None:
        ended = [k for k, op in self._all.items() if op.done.is_set()]
        for key in ended[:max(0, len(ended) - KEEP_ENDED)]:
            del self._all[key]

    def get(self, op_id: str) -> Operation:
        with self._lock:
            op = self._all.get(op_id)
        if op is None:
            raise NotFound(f"operation {op_id} not found (operations are kept by the server "
                           f"that started them, the last {KEEP_ENDED} that ended)")
        return op

    def running(self) -> list[Operation]:
        with self._lock:
            return [op for op in self._all.values() if not op.done.is_set()]

    def join(self, timeout: float) -> list[Operation]:
        """Wait up to ``timeout`` seconds in all for the running operations to end; the
        ones still running then."""
        deadline = time.monotonic() + timeout
        for op in self.running():
            op.done.wait(max(0.0, deadline - time.monotonic()))
        return self.running()
