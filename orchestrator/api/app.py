"""The ASGI application of `orch serve`: FastAPI with the routes of ``api.routes``.

Owned here: ``create_app`` and ``Backend`` (what every route is handed: the ``Opener``, the
operations, the token, the controller's state), the mapping of errors to HTTP answers
(``{"error": {"code", "message"}}``: 400 bad input, 404 not found, 409 conflict, 503
environment, 401 no or wrong token, 413 body too large, 500 a failure), the body size limit
(checked while the body arrives, so a body without a length is bounded too), the
bearer-token check on every route but ``GET /healthz`` and the portal's static page, and
the OpenAPI document (``openapi_document``: FastAPI's, made to say what the API answers).

Called by: api.routes, api.serve
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match, Route

from orchestrator.api.auth import token_matches
from orchestrator.api.operations import (
    ERROR_SCHEMA,
    OPERATION_SCHEMA,
    Opener,
    Operations,
    error_json,
)
from orchestrator.errors import Conflict, InvalidInput, NotFound, OrchError
from orchestrator.model import MAX_INPUT_BYTES

MAX_BODY_BYTES = MAX_INPUT_BYTES  # as the CLI's -f and --custom-data files
# the portal's files by path: (file in api/portal, media type); served without the token
PORTAL_FILES = {"/": ("index.html", "text/html"), "/portal.js": ("portal.js", "text/javascript"),
                "/portal.css": ("portal.css", "text/css"),
                "/favicon.svg": ("favicon.svg", "image/svg+xml")}
PUBLIC_PATHS = frozenset({"/healthz", *PORTAL_FILES})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class ControllerState:
    """What ``/healthz`` tells of the controller loop running beside the API."""

    running: bool = False
    passes: int = 0
    last_pass_at: str | None = None
    last_problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"running": self.running, "passes": self.passes,
                "lastPassAt": self.last_pass_at, "lastProblems": self.last_problems}


@dataclass
class Backend:
    """The collaborators of the routes."""

    opener: Opener
    operations: Operations
    token: str
    controller: ControllerState = field(default_factory=ControllerState)


def http_status(exc: OrchError) -> int:
    """The HTTP status of an error, with the meaning of the CLI's exit code."""
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, InvalidInput):
        return 400
    if isinstance(exc, Conflict):
        return 409
    if exc.exit_code == 4:
        return 503
    return 500


def error_response(status: int, code: str, message: str, *,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": " ".join(message.split())}},
                        status_code=status, headers=headers)


def validation_message(exc: RequestValidationError) -> str:
    """The first problem of a request, on one line, named by where it is as the CLI names a
    file's (``body.instanceIds.0: ...``, ``query.refresh: ...``, ``body: ...`` for the body
    as a whole)."""
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error")
        return "the request body is not valid JSON" + (f" ({reason})" if reason else "")
    where = ".".join(str(p) for p in first.get("loc", ()))
    if where == "body" and first.get("type") == "missing":
        return "body: a JSON body is required"
    text = ("unknown key" if first.get("type") == "extra_forbidden"
            else str(first.get("msg", "invalid")).removeprefix("Value error, "))
    more = (f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
            if len(errors) > 1 else "")
    return f"{where}: {text}{more}" if where else f"{text}{more}"


class BodyLimit:
    """Refuse a request body larger than ``limit`` bytes with 413 before any route sees it:
    by its Content-Length, or while it arrives (a chunked body). The body (at most ``limit``
    bytes) is read here and handed on whole, so that a route's own body parsing never meets
    the limit (FastAPI would turn an error raised while it reads into a 400)."""

    def __init__(self, app: ASGIApp, *, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and not length.isdigit():
            await error_response(400, "InvalidInput", "the Content-Length header is not a "
                                 "number", headers={"Connection": "close"})(scope, receive, send)
            return
        if length is not None and int(length) > self.limit:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        handed = False

        async def replay() -> Message:
            nonlocal handed
            if not handed:
                handed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        # the rest of the body is not read: the server closes the connection after this
        await error_response(413, "PayloadTooLarge",
                             f"the request body is larger than {self.limit} bytes",
                             headers={"Connection": "close"})(scope, receive, send)


class BearerToken:
    """Refuse with 401 a request to any path but the public ones that does not carry the
    server's bearer token. A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware``
    would pass every answer through a stream and a task of its own."""

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in PUBLIC_PATHS:
            header = next((value.decode("latin-1") for key, value in scope["headers"]
                           if key == b"authorization"), None)
            if not token_matches(header, self.token):
                await error_response(
                    401, "Unauthorized", "a valid bearer token is required (Authorization: "
                    "Bearer TOKEN; the token is in the file orch serve printed)",
                    headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(backend: Backend) -> FastAPI:
    """The application: routes, error handlers, token check, body limit."""
    from orchestrator.api import routes  # the routes import this module's helpers

    app = FastAPI(title="orchestrator", version="1",
                  description="Scale sets of QEMU/KVM virtual machines on libvirt, upgraded "
                              "the way Azure Virtual Machine Scale Sets are.",
                  docs_url=None, redoc_url=None, openapi_url=None,
                  generate_unique_id_function=lambda route: route.name)
    app.state.backend = backend

    @app.exception_handler(OrchError)
    async def orch_error(request: Request, exc: OrchError) -> JSONResponse:
        body = error_json(exc)
        return error_response(http_status(exc), body["code"], body["message"])

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "InvalidInput", validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        method, path = request.method, request.url.path
        if exc.status_code == 404:
            return error_response(404, "NotFound", f"no route {method} {path}")
        if exc.status_code == 405:
            allowed = _allowed_methods([*routes.router.routes, *app.router.routes],
                                       request.scope)
            return error_response(405, "MethodNotAllowed",
                                  f"{method} is not allowed on {path} (allowed: {allowed})",
                                  headers={"Allow": allowed})
        return error_response(exc.status_code, "HttpError", str(exc.detail),
                              headers=dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        body = error_json(exc)
        return error_response(500, body["code"], body["message"])

    app.include_router(routes.router)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_document(app)
        return app.openapi_schema

    for path, (name, media) in PORTAL_FILES.items():
        _static(app, path, name, media)
    app.add_middleware(BodyLimit)
    # the outermost: a request without the token is refused before its body is read
    app.add_middleware(BearerToken, token=backend.token)
    return app


REFUSALS = {
    "400": "Bad input: a name, an id or the body is not valid; nothing was changed.",
    "401": "No bearer token, or not the server's.",
    "404": "The scale set, instance, operation or route does not exist.",
    "409": "The scale set is busy: another operation holds its lock; nothing was changed.",
    "413": f"The request body is larger than {MAX_BODY_BYTES} bytes.",
    "503": "libvirt does not answer; nothing was changed.",
}
_ERROR = {"$ref": "#/components/schemas/Error"}
_OPERATION = {"$ref": "#/components/schemas/Operation"}


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, made true to how the API answers: refusals are the error shape
    (400 where FastAPI would say 422; 401 on every route but the public ones, 413 on every
    one that takes a body), 202 answers are the operation with its Location, and the models
    the routes refer to by hand (the PUT body's) are components."""
    from orchestrator.api import routes
    doc = get_openapi(title=app.title, version=app.version, description=app.description,
                      routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 body
        schemas.pop(unused, None)
    schemas["Error"] = {"type": "object", "required": ["error"], "additionalProperties": False,
                        "properties": {"error": ERROR_SCHEMA}}
    schemas["Operation"] = OPERATION_SCHEMA
    schemas.update(routes.components())
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for content in op.get("requestBody", {}).get("content", {}).values():
                if "$ref" in content.get("schema", {}):
                    # a body a route describes by reference (openapi_extra), without what
                    # FastAPI merged beside it from the parameter's own type
                    content["schema"] = {"$ref": content["schema"]["$ref"]}
            responses = op["responses"]
            if responses.pop("422", None) is not None or "{" in path:
                responses.setdefault("400", {})
            if "{" in path:
                responses.setdefault("404", {})
            if path not in PUBLIC_PATHS:
                responses.setdefault("401", {})
            if method != "get":
                responses.setdefault("413", {})
            for status, answer in responses.items():
                if status[0] in "45":
                    answer.setdefault("description", REFUSALS.get(status, "Refused."))
                    answer["content"] = {"application/json": {"schema": _ERROR}}
            if "202" in responses:
                responses["202"] = {
                    "description": "Started: the operation, to be polled at its Location.",
                    "headers": {"Location": {"description": "/v1/operations/{id}",
                                             "schema": {"type": "string"}}},
                    "content": {"application/json": {"schema": _OPERATION}}}
    return doc


def _allowed_methods(routes: list[BaseRoute], scope: Scope) -> str:
    """The methods of the routes whose path matches the request's (Starlette's own 405
    names only the first such route's)."""
    methods: set[str] = set()
    for route in routes:
        if isinstance(route, Route) and route.methods and \
                route.matches({**scope, "method": "GET"})[0] is not Match.NONE:
            methods |= route.methods - {"HEAD"}
    return ", ".join(sorted(methods))


def _static(app: FastAPI, path: str, name: str, media: str) -> None:
    @app.get(path, include_in_schema=False)
    def page() -> Response:
        text = resources.files("orchestrator.api").joinpath("portal", name).read_bytes()
        return Response(text, media_type=media,
                        headers={"Cache-Control": "no-store",
                                 "Content-Security-Policy": "default-src 'self'; "
                                 "frame-ancestors 'none'"})
