"""The ASGI application of `orch serve`: FastAPI with the routes of ``api.routes``.

Owned here: ``create_app`` and ``Backend`` (what every route is handed: the ``Opener``, the
operations, the token, the controller's state), the mapping of errors to HTTP answers
(``{"error": {"code", "message"}}``: 400 bad input, 404 not found, 409 conflict, 503
environment, 401 no or wrong token, 413 body too large, 500 a failure), the body size limit
(checked while the body arrives, so a body without a length is bounded too), and the
bearer-token check on every route but ``GET /healthz`` and the portal's static page.

Called by: api.routes, api.serve
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.api.operations import Opener, Operations, error_json
from orchestrator.errors import Conflict, InvalidInput, NotFound, OrchError

MAX_BODY_BYTES = 65536  # as the CLI's -f and --custom-data files
PUBLIC_PATHS = frozenset({"/healthz", "/", "/portal.js", "/portal.css"})

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


def _validation_message(exc: RequestValidationError) -> str:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    text = str(first.get("msg", "invalid request"))
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON"
    return f"{where}: {text}" if where else text


class BodyLimit:
    """Refuse a request body larger than ``limit`` bytes with 413, before a route reads it
    (by its Content-Length) or while it arrives (a chunked body)."""

    def __init__(self, app: ASGIApp, *, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_large = error_response(413, "PayloadTooLarge",
                                   f"the request body is larger than {self.limit} bytes")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await too_large(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await too_large(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(backend: Backend) -> FastAPI:
    """The application: routes, error handlers, token check, body limit."""
    from orchestrator.api import routes  # the routes import this module's helpers

    app = FastAPI(title="orchestrator", version="1",
                  description="Scale sets of QEMU/KVM virtual machines on libvirt, upgraded "
                              "the way Azure Virtual Machine Scale Sets are.",
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.backend = backend

    @app.middleware("http")
    async def bearer_token(request: Request,
                           call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        from orchestrator.api.auth import token_matches

        if request.url.path not in PUBLIC_PATHS and not token_matches(
                request.headers.get("authorization"), backend.token):
            return error_response(401, "Unauthorized",
                                  "a valid bearer token is required (Authorization: Bearer "
                                  "TOKEN; the token is in the file orch serve printed)",
                                  headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.exception_handler(OrchError)
    async def orch_error(request: Request, exc: OrchError) -> JSONResponse:
        body = error_json(exc)
        return error_response(http_status(exc), body["code"], body["message"])

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "InvalidInput", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "NotFound", 405: "MethodNotAllowed"}
        message = (f"no route {request.method} {request.url.path}" if exc.status_code in codes
                   else str(exc.detail))
        return error_response(exc.status_code, codes.get(exc.status_code, "HttpError"), message)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        body = error_json(exc)
        return error_response(500, body["code"], body["message"])

    app.include_router(routes.router)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    for name, media in (("index.html", "text/html"), ("portal.js", "text/javascript"),
                        ("portal.css", "text/css")):
        _static(app, name, media)
    app.add_middleware(BodyLimit)
    return app


def _static(app: FastAPI, name: str, media: str) -> None:
    path = "/" if name == "index.html" else f"/{name}"

    @app.get(path, include_in_schema=False)
    def page() -> Response:
        text = resources.files("orchestrator.api").joinpath("portal", name).read_bytes()
        return Response(text, media_type=media,
                        headers={"Cache-Control": "no-store",
                                 "Content-Security-Policy": "default-src 'self'; "
                                 "frame-ancestors 'none'"})
