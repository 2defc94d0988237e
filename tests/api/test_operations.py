"""Operations, the API's long work: one runs on a thread of its own while the API answers
(Running, holding the set's lock as a CLI command would), ends Succeeded with the CLI's form
as its result or Failed with the error's code and one-line message, and the server keeps the
last ones it started."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.api import operations
from orchestrator.api.operations import Operations
from orchestrator.errors import NotFound
from orchestrator.hypervisor.base import Domain
from orchestrator.usecases import updates
from orchestrator.usecases.session import Env
from tests.api.conftest import Api, cli_json, error_of
from tests.unit.fakecli import FakeCli
from tests.world import World

DEADLINE = 30.0


class Gate:
    """Holds every call of the fake host's ``define_domain`` until opened: an operation
    caught mid-way, its lock held, as a slow libvirt would hold it."""

    def __init__(self, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        define = world.hv.define_domain

        def held(domain: Domain) -> None:
            self.entered.set()
            assert self.opened.wait(DEADLINE), "the gate was never opened"
            define(domain)

        monkeypatch.setattr(world.hv, "define_domain", held)

    def wait_entered(self) -> None:
        assert self.entered.wait(DEADLINE), "no operation reached the gate"


@pytest.fixture
def gate(api: Api, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    api.create("web", count=2)
    held = Gate(api.world, monkeypatch)
    try:
        yield held
    finally:
        held.opened.set()  # whatever the test did, its operation may end


def test_an_operation_runs_while_the_api_answers_then_succeeds(api: Api, cli: FakeCli,
                                                                gate: Gate) -> None:
    answer = api.http.post("/v1/scaleSets/web/scale", json={"capacity": 3})
    assert answer.status_code == 202
    assert answer.json()["status"] == "Running"
    gate.wait_entered()
    location = answer.headers["location"]
    running = api.http.get(location).json()
    assert (running["status"], running["endedAt"], running["result"]) == ("Running", None, None)
    assert any("web-2: creating" in line for line in running["progress"]), running
    # meanwhile reads are answered and another write meets the lock the operation holds
    assert api.http.get("/v1/scaleSets/web").json()["capacity"] == 2  # not yet recorded
    assert api.http.get("/v1/scaleSets/web/virtualMachines?refresh=false").status_code == 200
    error = error_of(api.http.post("/v1/scaleSets/web/restart"), 409)
    assert "scale set web is busy" in error["message"]
    journal = cli_json(cli, "vmss", "list-operations", "--name", "web")
    assert [(o["kind"], o["status"]) for o in journal] == [("create", "succeeded"),
                                                          ("scale", "running")]
    gate.opened.set()
    done = api.wait(answer)
    assert (done["status"], done["error"]) == ("Succeeded", None)
    assert done["endedAt"] is not None
    assert done["result"] == cli_json(cli, "vmss", "show", "--name", "web")
    assert done["result"]["instanceCount"] == 3
    journal = cli_json(cli, "vmss", "list-operations", "--name", "web")
    assert [o["status"] for o in journal] == ["succeeded", "succeeded"]


def test_the_server_stop_waits_for_running_operations(api: Api, gate: Gate) -> None:
    answer = api.http.post("/v1/scaleSets/web/scale", json={"capacity": 3})
    gate.wait_entered()
    assert [op.id for op in api.backend.operations.join(0.05)] == [answer.json()["id"]]
    gate.opened.set()
    assert api.backend.operations.join(DEADLINE) == []
    assert api.wait(answer)["status"] == "Succeeded"


def test_an_upgrade_to_a_broken_image_ends_failed(api: Api, cli: FakeCli) -> None:
    api.create("web", count=2)
    api.world.register_image("tiny", "2")
    api.world.prober.broken_images.add(str(api.world.registry.get("tiny:2").disk))
    api.succeeded(api.http.patch("/v1/scaleSets/web", json={"image": "tiny:2"}))
    op = api.wait(api.http.post("/v1/scaleSets/web/manualupgrade", json={"instanceIds": [0]}))
    assert (op["status"], op["result"]) == ("Failed", None)
    assert op["error"]["code"] == "OperationFailed"
    message = op["error"]["message"]
    assert "web-0" in message and "\n" not in message
    assert message == "update-instances: 1 of 1 instances failed: web-0 Unhealthy"
    assert api.http.get(f"/v1/operations/{op['id']}").json() == op
    listed = cli_json(cli, "vmss", "list-instances", "--name", "web")
    assert [i["healthState"] for i in listed] == ["Unhealthy", "Healthy"]


def test_a_broken_instance_fails_its_restart(api: Api) -> None:
    api.create("web", count=2)
    api.world.prober.unhealthy.add("web-1")
    op = api.wait(api.http.post("/v1/scaleSets/web/restart", json={"instanceIds": [1]}))
    assert op["status"] == "Failed"
    assert op["error"]["code"] == "OperationFailed"
    assert "web-1" in op["error"]["message"]


def test_a_create_whose_instances_stay_unhealthy_fails(api: Api, cli: FakeCli) -> None:
    api.world.prober.broken_images.add(str(api.world.registry.get("tiny:1").disk))
    op = api.wait(api.http.put("/v1/scaleSets/web", json={
        "apiVersion": "orchestrator/v1", "kind": "ScaleSet", "metadata": {"name": "web"},
        "spec": {"image": "tiny:1", "capacity": 1}}))
    assert (op["status"], op["kind"], op["error"]["code"]) == ("Failed", "apply",
                                                               "OperationFailed")
    assert op["error"]["message"].startswith(
        "create: 1 of 1 instances not healthy: web-0 Unhealthy")
    # as after `vmss create`: the set stays, its instance Unhealthy
    listed = cli_json(cli, "vmss", "list-instances", "--name", "web")
    assert [i["healthState"] for i in listed] == ["Unhealthy"]


def test_operation_ids_are_random(api: Api) -> None:
    api.create("web", count=1)
    ids = [api.wait(api.http.post("/v1/scaleSets/web/restart"))["id"] for _ in range(2)]
    assert ids[0] != ids[1]
    for op_id in ids:
        assert len(op_id) == 32 and set(op_id) <= set("0123456789abcdef")


def test_the_last_ended_operations_are_kept(world: World,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(operations, "KEEP_ENDED", 2)
    ops = Operations(world.opened)
    release = threading.Event()

    async def quick(env: Env) -> int:
        return 1

    async def slow(env: Env) -> int:
        assert release.wait(DEADLINE)
        return 2

    running = ops.start(kind="slow", scale_set="web", work=slow, result=lambda v: v)
    ended = []
    for _ in range(4):
        op = ops.start(kind="quick", scale_set="web", work=quick, result=lambda v: v)
        assert op.done.wait(DEADLINE)
        ended.append(op)
    ops.start(kind="quick", scale_set="web", work=quick, result=lambda v: v).done.wait(DEADLINE)
    # each start forgets all but the last two that ended by then
    assert [_found(ops, op.id) for op in ended] == [False, False, True, True]
    assert ops.get(running.id) is running  # a running one is never forgotten
    release.set()
    assert ops.join(DEADLINE) == []
    assert running.result == 2 and running.status == "Succeeded"


def test_a_failure_that_is_no_orch_error_is_an_internal_error(world: World) -> None:
    ops = Operations(world.opened)

    async def broken(env: Env) -> Any:
        raise KeyError("boom")

    op = ops.start(kind="x", scale_set="web", work=broken, result=lambda v: v)
    assert op.done.wait(DEADLINE)
    assert op.as_json()["error"] == {"code": "InternalError", "message": "KeyError: 'boom'"}
    assert op.status == "Failed"


def _found(ops: Operations, op_id: str) -> bool:
    try:
        ops.get(op_id)
    except NotFound:
        return False
    return True


def test_a_patch_merges_into_the_set_as_it_is_when_its_work_starts(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    api.create("web", count=1)
    start = api.backend.operations.start

    def after_another_update(**kw: Any) -> Any:
        # another command changed the set between the PATCH's checks and its work
        with api.world.opened(lambda line: None) as env:  # a store connection of its own
            asyncio.run(updates.update(env, "web", {"model": {"tags": {"team": "a"}}}))
        return start(**kw)

    monkeypatch.setattr(api.backend.operations, "start", after_another_update)
    result = api.succeeded(api.http.patch("/v1/scaleSets/web",
                                          json={"healthProbe": {"port": 2222}}))
    assert result["model"]["healthProbe"]["port"] == 2222
    assert result["model"]["tags"] == {"team": "a"}  # kept, not undone by the PATCH
