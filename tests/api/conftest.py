"""Fixtures of the HTTP API tests: the app of `orch serve` on the shared fake world, called
through Starlette's test client (no socket), and a helper that waits for an operation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from orchestrator.api.app import Backend, create_app
from orchestrator.api.operations import Operations
from tests.world import World, make_world

TOKEN = "test-token-0123456789"


@dataclass
class Api:
    world: World
    backend: Backend
    http: TestClient  # sends the token
    anonymous: TestClient  # sends none

    def wait(self, answer: Any, *, timeout: float = 30.0) -> dict[str, Any]:
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

    def create(self, name: str = "web", *, count: int = 2, **spec: Any) -> dict[str, Any]:
        body = {"apiVersion": "orchestrator/v1", "kind": "ScaleSet", "metadata": {"name": name},
                "spec": {"image": "tiny:1", "capacity": count, **spec}}
        op = self.wait(self.http.put(f"/v1/scaleSets/{name}", json=body))
        assert op["status"] == "Succeeded", op
        return op


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    world = make_world(tmp_path)
    backend = Backend(opener=world.opened, operations=Operations(world.opened), token=TOKEN)
    app = create_app(backend)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"},
                    raise_server_exceptions=False) as http, \
            TestClient(app, raise_server_exceptions=False) as anonymous:
        yield Api(world, backend, http, anonymous)
        backend.operations.join(30)
