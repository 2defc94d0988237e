"""Fixtures of the HTTP API tests: the app of `orch serve` on the shared fake world, called
through Starlette's test client (no socket), a helper that waits for an operation, and the
CLI on the same world (``cli``, as tests/unit has it) to compare the API's answers with
``-o json``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from orchestrator.api.app import Backend, create_app
from orchestrator.api.operations import Operations
from tests.unit.fakecli import FakeCli, install
from tests.world import World, make_world, snapshot

TOKEN = "test-token-0123456789"


@dataclass
class Api:
    world: World
    backend: Backend
    http: TestClient  # sends the token
    anonymous: TestClient  # sends none

    def wait(self, answer: httpx.Response, *, timeout: float = 30.0) -> dict[str, Any]:
        """The operation a 202 answer started, polled until it ends (deadline ``timeout``)."""
        assert answer.status_code == 202, answer.text
        location = answer.headers["location"]
        deadline = time.monotonic() + timeout
        while True:
            op = self.http.get(location).json()
            if op["status"] != "Running":
                return op  # type: ignore[no-any-return]
            assert time.monotonic() < deadline, f"operation still running: {op}"
            self.backend.operations.get(op["id"]).done.wait(0.05)

    def succeeded(self, answer: httpx.Response) -> Any:
        """The result of the operation ``answer`` started, which must succeed."""
        op = self.wait(answer)
        assert op["status"] == "Succeeded", op
        return op["result"]

    def create(self, name: str = "web", *, count: int = 2, **spec: Any) -> dict[str, Any]:
        body = {"apiVersion": "orchestrator/v1", "kind": "ScaleSet", "metadata": {"name": name},
                "spec": {"image": "tiny:1", "capacity": count, **spec}}
        op = self.wait(self.http.put(f"/v1/scaleSets/{name}", json=body))
        assert op["status"] == "Succeeded", op
        return op

    def state(self) -> tuple[dict[str, str], dict[str, str]]:
        """What a refused request must leave as it was: every file of the state dir (the
        store by its content) and the fake host's domains with their power states."""
        domains = {d.name: d.state.value for d in self.world.hv.list_domains()}
        return snapshot(self.world.state_dir), domains


def error_of(answer: httpx.Response, status: int) -> dict[str, str]:
    """The ``{"code", "message"}`` of an error answer, which must have ``status``, the error
    shape and a one-line message."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json", answer.headers
    body = answer.json()
    assert list(body) == ["error"] and sorted(body["error"]) == ["code", "message"], body
    assert body["error"]["message"] and "\n" not in body["error"]["message"], body
    return body["error"]  # type: ignore[no-any-return]


def cli_json(cli: FakeCli, *args: str) -> Any:
    """``orch ARGS -o json``, which must succeed, parsed."""
    code, out, err = cli.run(*args, "-o", "json")
    assert code == 0, (args, err)
    return json.loads(out)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


@pytest.fixture
def cli(world: World, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> FakeCli:
    """`orch` run in-process against ``world``, the world ``api`` serves."""
    return install(world, monkeypatch, capsys)


@pytest.fixture
def api(world: World) -> Iterator[Api]:
    backend = Backend(opener=world.opened, operations=Operations(world.opened), token=TOKEN)
    app = create_app(backend)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"},
                    raise_server_exceptions=False) as http, \
            TestClient(app, raise_server_exceptions=False) as anonymous:
        yield Api(world, backend, http, anonymous)
        assert not backend.operations.join(30), "operations still running after the test"
