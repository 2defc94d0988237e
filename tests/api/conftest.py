"""Fixtures of the HTTP API tests: the app of `orch serve` on the shared fake world, called
through Starlette's test client (no socket), a helper that waits for an operation, and the
CLI on the same world (``cli``, as tests/unit has it) to compare the API's answers with
``-o json``."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from orchestrator import ssh
from orchestrator.api.app import Backend, create_app
from orchestrator.api.operations import Operations
from orchestrator.errors import Unreachable
from tests.unit.fakecli import FakeCli
from tests.world import World, make_world, snapshot

TOKEN = "test-token-0123456789"
# the fake hypervisor's calls that change nothing
HYPERVISOR_READS = frozenset({
    "list_domains", "domain_state", "domain_owner", "pool_info", "list_volumes", "find_volume",
    "read_volume_tail", "network_info", "list_reservations", "leased_addresses", "host_info",
    "close"})


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

    def state(self) -> tuple[dict[str, str], list[Any]]:
        """What a refused request must leave as it was: every file of the state dir (the
        store by its content), every fake host's domain definitions and the calls that
        change a host made so far (read from the fakes, not through libvirt's protocol, so
        that it also works while a fake is unavailable)."""
        hosts = [self.world.hv, *self.world.fakes.values()]
        return snapshot(self.world.state_dir), [
            (hv.domains, [c for c in hv.calls if c[0] not in HYPERVISOR_READS]) for hv in hosts]


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


@pytest.fixture(scope="module", autouse=True)
def no_lab_defaults() -> Iterator[None]:
    """The lab's defaults (`orch lab exec` sets them, and `make test` runs inside it) are
    not the fake world's: a PUT without a network would land on the lab's. Per module, so
    that they are back for the tests after these (the real-VM tests need them)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("ORCH_NETWORK", "ORCH_POOL"):
            patch.delenv(name, raising=False)
        yield


@pytest.fixture(autouse=True)
def no_ssh(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches a real guest over SSH: a test that runs a command stands in for
    ``ssh.run_command`` itself."""

    async def unreachable(endpoint: ssh.Endpoint, command: str, **kw: Any) -> ssh.CommandResult:
        raise Unreachable(f"ssh {endpoint.host}: the API tests reach no guest")

    monkeypatch.setattr(ssh, "run_command", unreachable)


@contextlib.contextmanager
def serving(world: World) -> Iterator[Api]:
    """The app of `orch serve` on ``world``; every operation must have ended at the end."""
    backend = Backend(opener=world.opened, operations=Operations(world.opened), token=TOKEN)
    app = create_app(backend)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"},
                    raise_server_exceptions=False) as http, \
            TestClient(app, raise_server_exceptions=False) as anonymous:
        yield Api(world, backend, http, anonymous)
        assert not backend.operations.join(30), "operations still running after the test"


@pytest.fixture
def api(world: World) -> Iterator[Api]:
    with serving(world) as served:
        yield served


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The app on a world with the Rolling set web of two instances, and an image big:1 that needs
    more memory than the set's model gives: one for a module whose requests are refused (each
    test checks that its request changed nothing)."""
    with serving(make_world(tmp_path_factory.mktemp("web"))) as served:
        served.create("web", count=2, upgradePolicy={"mode": "Rolling"})
        served.world.register_image("big", "1", minMemoryMiB=512)
        yield served
