"""The API's refusals: every error code in the error shape ``{"error": {"code",
"message"}}`` with a one-line message, and a refused request changes nothing (the state dir
and the fake host's domains are compared before and after)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.api.app import MAX_BODY_BYTES
from tests.api.conftest import Api, error_of

DOC = {"apiVersion": "orchestrator/v1", "kind": "ScaleSet", "metadata": {"name": "web"},
       "spec": {"image": "tiny:1", "capacity": 2}}


def doc(**spec: Any) -> dict[str, Any]:
    return {**DOC, "spec": {**DOC["spec"], **spec}}


@pytest.fixture
def own_web(api: Api) -> Api:
    """Like ``web``, for a test whose request is taken (it changes the set)."""
    api.create("web", count=2)
    return api


def refused(api: Api, method: str, path: str, status: int, **request: Any) -> dict[str, str]:
    """The error of ``method path``, which must answer ``status`` and change nothing."""
    before = api.state()
    error = error_of(api.http.request(method, path, **request), status)
    assert api.backend.operations.running() == []
    assert api.state() == before
    return error


# --- 400 --------------------------------------------------------------------------------------
BAD_INPUT = [
    # (method, path, request, what the message must hold)
    ("GET", "/v1/scaleSets/WEB", {}, "invalid scale set name 'WEB'"),
    ("GET", "/v1/scaleSets/-web", {}, "invalid scale set name '-web'"),
    ("GET", f"/v1/scaleSets/{'a' * 41}", {}, "invalid scale set name"),
    ("POST", "/v1/scaleSets/WEB/restart", {"json": {"instanceIds": [0]}},
     "invalid scale set name 'WEB'"),
    ("DELETE", "/v1/scaleSets/Web", {}, "invalid scale set name 'Web'"),
    ("PUT", "/v1/scaleSets/WEB", {"json": DOC}, "invalid scale set name 'WEB'"),
    ("GET", "/v1/scaleSets/web/virtualMachines/x", {}, "invalid instance id 'x'"),
    ("GET", "/v1/scaleSets/web/virtualMachines/-1", {}, "invalid instance id '-1'"),
    ("GET", "/v1/scaleSets/web/virtualMachines/\u00b2", {}, "invalid instance id '\u00b2'"),
    ("GET", "/v1/scaleSets/web/virtualMachines/1234567890", {},
     "invalid instance id '1234567890'"),
    ("GET", "/v1/scaleSets/web/virtualMachines/1.0", {}, "invalid instance id '1.0'"),
    ("POST", "/v1/scaleSets/web/virtualMachines/x/runCommand", {"json": {"script": "true"}},
     "invalid instance id 'x'"),
    ("GET", "/v1/scaleSets/web/virtualMachines?refresh=maybe", {}, "query.refresh: "),
    ("GET", "/v1/operations/abc", {}, "invalid operation id 'abc'"),
    # instance ids in a body
    ("POST", "/v1/scaleSets/web/restart", {"json": {"instanceIds": ["1"]}},
     "body.instanceIds.0: "),
    ("POST", "/v1/scaleSets/web/restart", {"json": {"instanceIds": [0, -1]}},
     "body.instanceIds.1: "),
    ("POST", "/v1/scaleSets/web/restart", {"json": {"instanceIds": [1234567890]}},
     "body.instanceIds.0: "),
    ("POST", "/v1/scaleSets/web/restart", {"json": {"instanceIds": [1.0]}},
     "body.instanceIds.0: "),
    ("POST", "/v1/scaleSets/web/restart", {"json": {"instanceIds": [True]}},
     "body.instanceIds.0: "),
    ("POST", "/v1/scaleSets/web/restart", {"json": {"instanceIds": 1}}, "body.instanceIds: "),
    ("POST", "/v1/scaleSets/web/restart", {"json": {"instanceIds": []}},
     "body.instanceIds: "),
    ("POST", "/v1/scaleSets/web/restart", {"json": {"instanceIds": [0], "force": True}},
     "body.force: unknown key"),
    ("POST", "/v1/scaleSets/web/restart", {"json": [0]}, "body: "),
    ("POST", "/v1/scaleSets/web/manualupgrade", {"json": {}}, "manualupgrade needs instanceIds"),
    ("POST", "/v1/scaleSets/web/manualupgrade", {}, "manualupgrade needs instanceIds"),
    ("POST", "/v1/scaleSets/web/delete", {"json": {"instanceIds": None}},
     "delete needs instanceIds"),
    # malformed bodies
    ("POST", "/v1/scaleSets/web/restart",
     {"content": b'{"instanceIds": [0', "headers": {"content-type": "application/json"}},
     "the request body is not valid JSON"),
    ("POST", "/v1/scaleSets/web/scale",
     {"content": b"\xff\xfe", "headers": {"content-type": "application/json"}},
     "the request body is not valid JSON"),
    ("PUT", "/v1/scaleSets/web",
     {"content": b"apiVersion: orchestrator/v1", "headers": {"content-type": "application/json"}},
     "the request body is not valid JSON"),
    # scale
    ("POST", "/v1/scaleSets/web/scale", {"json": {"capacity": "3"}}, "body.capacity: "),
    ("POST", "/v1/scaleSets/web/scale", {"json": {"capacity": 2.5}}, "body.capacity: "),
    ("POST", "/v1/scaleSets/web/scale", {"json": {"capacity": -1}}, "body.capacity: "),
    ("POST", "/v1/scaleSets/web/scale", {"json": {"capacity": 1001}}, "body.capacity: "),
    ("POST", "/v1/scaleSets/web/scale", {"json": {}}, "body.capacity: Field required"),
    ("POST", "/v1/scaleSets/web/scale", {}, "body: a JSON body is required"),
    ("POST", "/v1/scaleSets/web/scale", {"json": {"capacity": 3, "x": 1}},
     "body.x: unknown key"),
    # runCommand
    ("POST", "/v1/scaleSets/web/virtualMachines/0/runCommand", {"json": {"script": ""}},
     "body.script: "),
    ("POST", "/v1/scaleSets/web/virtualMachines/0/runCommand", {"json": {}},
     "body.script: Field required"),
    ("POST", "/v1/scaleSets/web/virtualMachines/0/runCommand",
     {"json": {"script": "true", "timeout": "5"}}, "body.timeout: "),
    ("POST", "/v1/scaleSets/web/virtualMachines/0/runCommand",
     {"json": {"script": "true", "timeout": 0}}, "body.timeout: "),
    ("POST", "/v1/scaleSets/web/virtualMachines/0/runCommand",
     {"json": {"script": "true", "user": "root"}}, "body.user: unknown key"),
    # PUT
    ("PUT", "/v1/scaleSets/web", {"json": {**DOC, "metadata": {"name": "db"}}},
     "body.metadata.name: db is not the name in the path, web"),
    ("PUT", "/v1/scaleSets/db", {"json": DOC}, "body.metadata.name: web is not the name in the path, db"),
    ("PUT", "/v1/scaleSets/web", {"json": doc(capacity="3")}, "body.spec.capacity: "),
    ("PUT", "/v1/scaleSets/web", {"json": doc(bogus=1)}, "body.spec.bogus: unknown key"),
    ("PUT", "/v1/scaleSets/web", {"json": {**DOC, "kind": "Pod"}}, "body.kind: "),
    ("PUT", "/v1/scaleSets/web", {"json": [DOC]}, "body: "),
    ("PUT", "/v1/scaleSets/web", {}, "body: a JSON body is required"),
    ("PUT", "/v1/scaleSets/web", {"json": doc(image="nope:1")},
     "body.spec.image: image nope:1 is not registered"),
    ("PUT", "/v1/scaleSets/web", {"json": doc(network="other")},
     "body.spec.network: changing the network of an existing scale set is not supported"),
    ("PUT", "/v1/scaleSets/web", {"json": doc(image="tiny:2")}, "body.spec.image: image tiny:2"),
    ("PUT", "/v1/scaleSets/web", {"json": doc(image="big:1")},
     "body.spec.memoryMiB: image big:1 needs at least 512 MiB of memory, the model gives"),
    ("PATCH", "/v1/scaleSets/web", {"json": {"image": "big:1"}},
     "body.memoryMiB: image big:1 needs at least 512 MiB"),
    ("PUT", "/v1/scaleSets/db", {"json": {**doc(image="big:1"), "metadata": {"name": "db"}}},
     "body.spec.memoryMiB: image big:1 needs at least 512 MiB"),
    # PATCH
    ("PATCH", "/v1/scaleSets/web", {"json": {"image": "tiny:1"}}, "nothing to update"),
    ("PATCH", "/v1/scaleSets/web", {"json": {}}, "nothing to update"),
    ("PATCH", "/v1/scaleSets/web", {"json": {"bogus": 1}}, "body.bogus: unknown key"),
    ("PATCH", "/v1/scaleSets/web", {"json": {"capacity": "3"}}, "body.capacity: "),
    ("PATCH", "/v1/scaleSets/web", {"json": {"healthProbe": {"port": 0}}},
     "body.healthProbe.port: "),
    ("PATCH", "/v1/scaleSets/web", {"json": [1]}, "body: "),
    ("PATCH", "/v1/scaleSets/web", {"json": {"image": "nope:1"}},
     "body.image: image nope:1 is not registered"),
    ("PATCH", "/v1/scaleSets/web", {"json": {"network": "other"}},
     "body.network: changing the network of an existing scale set is not supported"),
]


@pytest.mark.parametrize(("method", "path", "request_", "message"), BAD_INPUT,
                         ids=[f"{m} {p} {i}" for i, (m, p, _, _) in enumerate(BAD_INPUT)])
def test_bad_input_is_400_and_changes_nothing(web: Api, method: str, path: str,
                                              request_: dict[str, Any], message: str) -> None:
    error = refused(web, method, path, 400, **request_)
    assert error["code"] == "InvalidInput"
    assert message in error["message"], error


def test_request_validation_is_400_never_422(web: Api) -> None:
    for method, path, body in [("GET", "/v1/scaleSets/web/virtualMachines?refresh=2", None),
                               ("POST", "/v1/scaleSets/web/scale", {"capacity": None}),
                               ("PATCH", "/v1/scaleSets/web", "tiny:2")]:
        answer = web.http.request(method, path, json=body)
        assert answer.status_code == 400, answer.text


# --- 404 --------------------------------------------------------------------------------------
NOT_FOUND = [
    ("GET", "/v1/scaleSets/nope", {}, "scale set nope not found"),
    ("PATCH", "/v1/scaleSets/nope", {"json": {"capacity": 3}}, "scale set nope not found"),
    ("DELETE", "/v1/scaleSets/nope", {}, "scale set nope not found"),
    ("GET", "/v1/scaleSets/nope/virtualMachines", {}, "scale set nope not found"),
    ("GET", "/v1/scaleSets/nope/virtualMachines/0", {}, "scale set nope not found"),
    ("POST", "/v1/scaleSets/nope/restart", {"json": {"instanceIds": [0]}},
     "scale set nope not found"),
    ("POST", "/v1/scaleSets/nope/scale", {"json": {"capacity": 1}}, "scale set nope not found"),
    ("POST", "/v1/scaleSets/nope/osRollingUpgrade", {}, "scale set nope not found"),
    ("POST", "/v1/scaleSets/nope/rollingUpgrades/cancel", {}, "scale set nope not found"),
    ("GET", "/v1/scaleSets/nope/rollingUpgrades/latest", {}, "scale set nope not found"),
    ("POST", "/v1/scaleSets/nope/virtualMachines/0/runCommand", {"json": {"script": "true"}},
     "scale set nope not found"),
    ("GET", "/v1/scaleSets/web/virtualMachines/7", {}, "scale set web has no instance 7"),
    ("POST", "/v1/scaleSets/web/restart", {"json": {"instanceIds": [0, 7]}},
     "scale set web has no instance 7"),
    ("POST", "/v1/scaleSets/web/manualupgrade", {"json": {"instanceIds": [9]}},
     "scale set web has no instance 9"),
    ("POST", "/v1/scaleSets/web/delete", {"json": {"instanceIds": [9]}},
     "scale set web has no instance 9"),
    ("POST", "/v1/scaleSets/web/virtualMachines/7/runCommand", {"json": {"script": "true"}},
     "scale set web has no instance 7"),
    ("GET", "/v1/scaleSets/web/rollingUpgrades/latest", {}, "has had no rolling upgrade"),
    ("GET", f"/v1/operations/{'0' * 32}", {}, f"operation {'0' * 32} not found"),
    ("GET", "/v1/nope", {}, "no route GET /v1/nope"),
    ("POST", "/v1/scaleSets/web/frobnicate", {"json": {}},
     "no route POST /v1/scaleSets/web/frobnicate"),
    ("POST", "/v1/scaleSets/web/Restart", {"json": {}}, "no route POST"),
    ("GET", "/v1/scaleSets/web/virtualMachines/0/nope", {}, "no route GET"),
    ("POST", "/v2/scaleSets/web/restart", {"json": {}}, "no route POST"),
]


@pytest.mark.parametrize(("method", "path", "request_", "message"), NOT_FOUND,
                         ids=[f"{m} {p}" for m, p, _, _ in NOT_FOUND])
def test_what_does_not_exist_is_404(web: Api, method: str, path: str,
                                    request_: dict[str, Any], message: str) -> None:
    error = refused(web, method, path, 404, **request_)
    assert error["code"] == "NotFound"
    assert message in error["message"], error


# --- 405 --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("DELETE", "/v1/images", "GET"),
    ("POST", "/v1/scaleSets", "GET"),
    ("POST", "/v1/scaleSets/web", "DELETE, GET, PATCH, PUT"),
    ("PUT", "/v1/scaleSets/web/virtualMachines", "GET"),
    ("GET", "/v1/scaleSets/web/scale", "POST"),
    ("DELETE", "/v1/operations/" + "0" * 32, "GET"),
])
def test_a_method_a_route_does_not_have_is_405(web: Api, method: str, path: str,
                                               allowed: str) -> None:
    before = web.state()
    answer = web.http.request(method, path)
    error = error_of(answer, 405)
    assert error["code"] == "MethodNotAllowed"
    assert error["message"] == f"{method} is not allowed on {path} (allowed: {allowed})"
    assert answer.headers["allow"] == allowed
    assert web.state() == before


# --- 409 --------------------------------------------------------------------------------------
WRITES = [
    ("PUT", "/v1/scaleSets/web", {"json": doc(capacity=3)}),
    ("PATCH", "/v1/scaleSets/web", {"json": {"capacity": 3}}),
    ("DELETE", "/v1/scaleSets/web", {}),
    ("POST", "/v1/scaleSets/web/scale", {"json": {"capacity": 1}}),
    ("POST", "/v1/scaleSets/web/osRollingUpgrade", {}),
    *[("POST", f"/v1/scaleSets/web/{action}", {"json": {"instanceIds": [0]}})
      for action in ("manualupgrade", "reimage", "reimageall", "start", "poweroff", "restart",
                     "deallocate", "delete")],
    ("POST", "/v1/scaleSets/web/restart", {}),
]


@pytest.fixture
def locked(web: Api) -> Iterator[Api]:
    """``web`` while another process holds the set's lock."""
    with web.world.service.locked("web", "update"):
        yield web


@pytest.mark.parametrize(("method", "path", "request_"), WRITES,
                         ids=[f"{m} {p}" for m, p, _ in WRITES])
def test_a_write_while_the_lock_is_held_is_409(locked: Api, method: str, path: str,
                                               request_: dict[str, Any]) -> None:
    error = refused(locked, method, path, 409, **request_)
    assert error["code"] == "Conflict"
    assert "scale set web is busy" in error["message"], error


def test_reads_go_on_while_the_lock_is_held(locked: Api) -> None:
    for path in ("/v1/scaleSets", "/v1/scaleSets/web", "/v1/scaleSets/web/virtualMachines",
                 "/v1/scaleSets/web/virtualMachines/0"):
        assert locked.http.get(path).status_code == 200, path


# --- 413 --------------------------------------------------------------------------------------
def padded(size: int) -> bytes:
    """A valid scale body of exactly ``size`` bytes."""
    body = b'{"capacity": 3}'
    return body + b" " * (size - len(body))


def test_a_body_of_the_limit_is_taken(own_web: Api) -> None:
    web = own_web
    answer = web.http.post("/v1/scaleSets/web/scale", content=padded(MAX_BODY_BYTES),
                           headers={"content-type": "application/json"})
    assert web.succeeded(answer)["instanceCount"] == 3


def test_a_larger_body_is_413_by_its_length(web: Api) -> None:
    error = refused(web, "POST", "/v1/scaleSets/web/scale", 413,
                    content=padded(MAX_BODY_BYTES + 1),
                    headers={"content-type": "application/json"})
    assert error == {"code": "PayloadTooLarge",
                     "message": f"the request body is larger than {MAX_BODY_BYTES} bytes"}


def test_a_larger_body_without_a_length_is_413_as_it_arrives(web: Api) -> None:
    sent = threading.Event()

    def chunks() -> Iterator[bytes]:
        body = padded(MAX_BODY_BYTES + 1)
        for start in range(0, len(body), 4096):
            yield body[start:start + 4096]
        sent.set()

    error = refused(web, "POST", "/v1/scaleSets/web/scale", 413, content=chunks(),
                    headers={"content-type": "application/json"})
    assert error["code"] == "PayloadTooLarge"
    assert sent.is_set()


def test_a_chunked_body_within_the_limit_is_taken(own_web: Api) -> None:
    web, body = own_web, padded(MAX_BODY_BYTES)
    answer = web.http.post("/v1/scaleSets/web/scale",
                           content=iter([body[:1000], body[1000:]]),
                           headers={"content-type": "application/json"})
    assert "content-length" not in answer.request.headers
    assert web.succeeded(answer)["instanceCount"] == 3


@pytest.mark.parametrize("length", ["abc", "-1", "1e9"])
def test_a_content_length_that_is_no_number_is_refused(web: Api, length: str) -> None:
    before = web.state()
    answer = web.http.post("/v1/scaleSets/web/scale", content=b'{"capacity": 3}',
                           headers={"content-type": "application/json",
                                    "content-length": length})
    assert error_of(answer, 400) == {"code": "InvalidInput",
                                     "message": "the Content-Length header is not a number"}
    assert web.state() == before


# --- 503 --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "path", "request_"), [
    ("GET", "/v1/scaleSets/web/virtualMachines", {}),
    ("GET", "/v1/scaleSets/web/virtualMachines?refresh=false", {}),
    ("GET", "/v1/scaleSets/web/virtualMachines/0", {}),
    *WRITES,
    ("POST", "/v1/scaleSets/web/virtualMachines/0/runCommand", {"json": {"script": "true"}}),
])
def test_libvirt_unreachable_is_503_and_changes_nothing(web: Api, method: str, path: str,
                                                        request_: dict[str, Any]) -> None:
    with unavailable(web):
        error = refused(web, method, path, 503, **request_)
    assert error["code"] == "HypervisorUnavailable"
    assert "hypervisor unavailable" in error["message"]


@contextlib.contextmanager
def unavailable(api: Api) -> Iterator[None]:
    """The fake host's libvirt down (as libvirtd stopped) for the block."""
    api.world.hv.set_unavailable()
    try:
        yield
    finally:
        api.world.hv.set_unavailable(False)


def test_what_the_store_answers_needs_no_libvirt(web: Api) -> None:
    with unavailable(web):
        store_only(web)


def store_only(web: Api) -> None:
    assert web.anonymous.get("/healthz").status_code == 200
    for path in ("/v1/scaleSets", "/v1/scaleSets/web", "/v1/images", "/metrics"):
        assert web.http.get(path).status_code == 200, path
    hosts = web.http.get("/v1/hosts")  # as `host list`: the host is shown unreachable
    assert hosts.status_code == 200
    assert [h["state"] for h in hosts.json()] == ["Unreachable"]
