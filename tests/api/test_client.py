"""``orchestrator.client.Client`` against the app of `orch serve` on the fake world, called in
process through ``AppTransport``: every method, its typed records, waiting (typed results,
the deadline), and every error translated into the project's exception tree.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator import errors, ssh
from orchestrator.client import (
    Client,
    CommandResult,
    Health,
    Host,
    Image,
    Instance,
    InstanceView,
    Operation,
    RollingUpgrade,
    ScaleSet,
    document,
    error_of,
    read_token,
)
from orchestrator.errors import (
    Conflict,
    EnvironmentProblem,
    InvalidInput,
    NotFound,
    OperationFailed,
    SecurityError,
    Timeout,
    Unauthorized,
    Unreachable,
)
from orchestrator.usecases.session import Env

from .conftest import TOKEN, Api
from .inprocess import AppTransport, app_transport, served

URL = "http://testserver"


@pytest.fixture
def transport(api: Api) -> Iterator[AppTransport]:
    with app_transport(api.http.app) as found:
        yield found


@pytest.fixture
def client(transport: AppTransport) -> Iterator[Client]:
    with Client(URL, TOKEN, transport=transport) as found:
        yield found


@pytest.fixture
def web(api: Api, client: Client) -> ScaleSet:
    """Set web: 2 instances of tiny:1, Manual upgrade policy; tiny:2 registered."""
    api.world.register_image("tiny", "2")
    return client.apply(document("web", image="tiny:1", capacity=2))


def journal_kinds(api: Api, name: str) -> list[str]:
    return [op["kind"] for op in api.world.service.operations_view(name)]


# --- the service, images, hosts -------------------------------------------------------------
def test_healthz_metrics_openapi(client: Client, web: ScaleSet) -> None:
    health = client.healthz()
    assert isinstance(health, Health)
    assert health.status == "ok" and health.controller.running is False
    assert 'orch_set_capacity{set="web"} 2.0' in client.metrics()
    paths = client.openapi()["paths"]
    assert "/v1/scaleSets/{name}/virtualMachines/{id}/runCommand" in paths


def test_images_and_hosts(client: Client) -> None:
    images = client.images()
    assert [type(i) for i in images] == [Image]
    assert (images[0].ref, images[0].version, images[0].kernelBoot) == ("tiny:1", "1", True)
    hosts = client.hosts()
    assert [(type(h), h.name, h.state) for h in hosts] == [(Host, "local", "Ready")]


# --- scale sets -----------------------------------------------------------------------------
def test_apply_creates_then_brings_the_set_to_the_document(client: Client, web: ScaleSet) -> None:
    assert isinstance(web, ScaleSet)
    assert (web.name, web.capacity, web.image, web.instanceCount) == ("web", 2, "tiny:1", 2)
    assert web.upgradePolicy["mode"] == "Manual"
    assert [s.name for s in client.scale_sets()] == ["web"]
    grown = client.apply(document("web", image="tiny:1", capacity=3))
    assert (grown.capacity, grown.instanceCount) == (3, 3)
    assert client.scale_set("web").instanceCount == 3


def test_wait_false_returns_the_operation_and_wait_its_typed_result(client: Client) -> None:
    op = client.apply(document("api", image="tiny:1", capacity=1), wait=False)
    assert isinstance(op, Operation)
    assert (op.kind, op.scaleSet, len(op.id)) == ("apply", "api", 32)
    assert op.status in ("Running", "Succeeded")
    created = client.wait(op, timeout=30)
    assert isinstance(created, ScaleSet) and created.instanceCount == 1
    ended = client.operation(op.id)
    assert (ended.status, ended.error, ended.done) == ("Succeeded", None, True)
    assert ended.result["name"] == "api"  # fetched by id: the result is the JSON as it is
    assert ended.endedAt is not None and ended.progress


def test_update_then_manual_upgrade_of_one_instance(client: Client, web: ScaleSet) -> None:
    updated = client.update("web", {"image": "tiny:2"})
    assert (updated.image, updated.generation, updated.latestModelInstances) == ("tiny:2", 2, 0)
    upgraded = client.manual_upgrade("web", [0])
    assert [(i.instanceId, i.image, i.latestModelApplied) for i in upgraded] == [
        (0, "tiny:2", True)]
    listed = {i.instanceId: i for i in client.instances("web")}
    assert (listed[1].image, listed[1].latestModelApplied) == ("tiny:1", False)
    assert client.scale_set("web").latestModelInstances == 1


def test_instances_refresh_probes_and_refresh_false_does_not(api: Api, client: Client,
                                                             web: ScaleSet) -> None:
    before = len(api.world.prober.probes)
    quick = client.instances("web", refresh=False)
    assert len(api.world.prober.probes) == before
    assert [(type(i), i.instanceId, i.healthState) for i in quick] == [
        (Instance, 0, "Healthy"), (Instance, 1, "Healthy")]
    client.instances("web")
    assert len(api.world.prober.probes) == before + 2
    view = client.instance("web", 1)
    assert isinstance(view, InstanceView)
    assert (view.name, view.network, view.bootDiagnostics) == ("web-1", "default", None)
    assert view.lastProbe is not None and view.lastProbe["kind"] == "healthy"


def test_power_actions(api: Api, client: Client, web: ScaleSet) -> None:
    assert [(i.instanceId, i.powerState) for i in client.power_off("web", [0])] == [
        (0, "stopped")]
    assert [(i.instanceId, i.powerState) for i in client.deallocate("web", [1])] == [
        (1, "deallocated")]
    assert [(i.instanceId, i.powerState) for i in client.start("web")] == [
        (0, "running"), (1, "running")]
    restarted = client.restart("web", [1])
    assert [(i.instanceId, i.healthState) for i in restarted] == [(1, "Healthy")]
    assert journal_kinds(api, "web")[-4:] == ["stop", "deallocate", "start", "restart"]


def test_reimage_and_reimage_all_disks(api: Api, client: Client, web: ScaleSet) -> None:
    assert [i.instanceId for i in client.reimage("web", [1])] == [1]
    assert [i.instanceId for i in client.reimage("web", all_disks=True)] == [0, 1]
    assert journal_kinds(api, "web")[-2:] == ["reimage", "reimage"]


def test_scale_and_delete_instances(client: Client, web: ScaleSet) -> None:
    assert client.scale("web", 3).instanceCount == 3
    after = client.delete_instances("web", [0, 2])
    assert isinstance(after, ScaleSet) and (after.capacity, after.instanceCount) == (1, 1)
    assert [i.instanceId for i in client.instances("web", refresh=False)] == [1]


def test_delete_removes_everything(api: Api, client: Client, web: ScaleSet) -> None:
    assert client.delete("web") is None
    with pytest.raises(NotFound):
        client.scale_set("web")
    assert client.scale_sets() == []
    assert api.world.resources() == (set(), set(), set())


def test_delete_wait_false(client: Client, web: ScaleSet) -> None:
    op = client.delete("web", wait=False)
    assert op.kind == "delete"
    assert client.wait(op, timeout=30) is None


# --- rolling upgrades -----------------------------------------------------------------------
ROLLING = {"mode": "Rolling", "rollingUpgradePolicy": {"maxBatchInstancePercent": 50}}


def test_rolling_upgrade_latest_and_a_set_that_never_rolled(client: Client,
                                                            web: ScaleSet) -> None:
    with pytest.raises(NotFound, match="no rolling upgrade"):
        client.latest_rolling_upgrade("web")
    client.update("web", {"image": "tiny:2"})  # Manual: recorded, rolled by nothing
    client.update("web", {"upgradePolicy": ROLLING})
    status = client.os_rolling_upgrade("web")
    assert isinstance(status, RollingUpgrade)
    assert (status.runningStatus.code, status.targetGeneration) == ("Completed", 2)
    assert status.progress.successfulInstanceCount == 2
    assert [b.instances for b in status.batches] == [[0], [1]]
    assert client.latest_rolling_upgrade("web") == status
    with pytest.raises(InvalidInput, match="no rolling upgrade in progress"):
        client.cancel_rolling_upgrade("web")


def test_cancel_rolling_upgrade_while_it_runs(api: Api, transport: AppTransport,
                                              client: Client, web: ScaleSet) -> None:
    client.update("web", {"image": "tiny:2"})
    client.update("web", {"upgradePolicy": ROLLING})
    cancelled: list[RollingUpgrade] = []
    define = api.world.hv.define_domain

    def define_and_cancel(domain: Any) -> None:  # in the first batch, as a user would
        define(domain)
        if not cancelled:
            with Client(URL, TOKEN, transport=transport) as other:
                cancelled.append(other.cancel_rolling_upgrade("web"))

    api.world.hv.define_domain = define_and_cancel  # type: ignore[method-assign]
    status = client.os_rolling_upgrade("web")
    assert cancelled[0].lastAction == "Cancel"
    assert cancelled[0].runningStatus.code == "RollingForward"  # the batch goes on
    assert (status.runningStatus.code, status.lastAction) == ("Cancelled", "Cancel")
    assert [b.instances for b in status.batches] == [[0]]


# --- run command ----------------------------------------------------------------------------
def test_run_command_returns_the_typed_result(monkeypatch: pytest.MonkeyPatch, client: Client,
                                              web: ScaleSet) -> None:
    seen: list[tuple[str, str, float]] = []

    async def run_command(endpoint: ssh.Endpoint, command: str, *, connect_timeout: float,
                          command_timeout: float) -> ssh.CommandResult:
        seen.append((endpoint.host, command, command_timeout))
        return ssh.CommandResult(exit_status=3, stdout="out\n", stderr="err\n", latency=0.01)

    monkeypatch.setattr(ssh, "run_command", run_command)
    result = client.run_command("web", 1, "exit 3", timeout=20)
    assert result == CommandResult(exitStatus=3, stdout="out\n", stderr="err\n")
    ip = client.instance("web", 1).ipAddress
    assert seen == [(ip, "exit 3", 20)]
    op = client.run_command("web", 0, "true", wait=False)
    assert op.kind == "runCommand" and client.wait(op).exitStatus == 3


def test_a_failed_operation_raises_the_class_its_code_names(monkeypatch: pytest.MonkeyPatch,
                                                            client: Client,
                                                            web: ScaleSet) -> None:
    async def unreachable(endpoint: ssh.Endpoint, command: str, **kw: Any) -> ssh.CommandResult:
        raise Unreachable(f"{endpoint.host}: no route to host")

    monkeypatch.setattr(ssh, "run_command", unreachable)
    with pytest.raises(Unreachable, match="no route to host") as caught:
        client.run_command("web", 0, "true")
    assert caught.value.temporary


def test_a_faulted_rolling_upgrade_raises_operation_failed(api: Api, client: Client,
                                                           web: ScaleSet) -> None:
    api.world.prober.broken_images.add(str(api.world.registry.get("tiny:2").disk))
    client.update("web", {"upgradePolicy": ROLLING})
    with pytest.raises(OperationFailed, match="Faulted") as caught:
        client.update("web", {"image": "tiny:2"})
    assert caught.value.details  # the operation's last progress lines
    assert client.latest_rolling_upgrade("web").runningStatus.code == "Faulted"


# --- waiting --------------------------------------------------------------------------------
def test_wait_runs_out_with_timeout_and_the_operation_goes_on(api: Api, client: Client,
                                                              web: ScaleSet) -> None:
    release = threading.Event()

    async def hold(env: Env) -> str:
        await asyncio.to_thread(release.wait)
        return "released"

    held = api.backend.operations.start(kind="hold", scale_set="web", work=hold,
                                        result=lambda value: value)
    try:
        op = client.operation(held.id)
        with pytest.raises(Timeout, match=f"operation {held.id} .*still running") as caught:
            client.wait(op, timeout=0.2)
        assert caught.value.hint is not None and held.id in caught.value.hint
        assert client.operation(held.id).status == "Running"
    finally:
        release.set()
    assert client.wait(op, timeout=30) == "released"


# --- errors ---------------------------------------------------------------------------------
def test_not_found(client: Client) -> None:
    with pytest.raises(NotFound, match="nosuch"):
        client.scale_set("nosuch")
    with pytest.raises(NotFound):
        client.instances("nosuch")
    with pytest.raises(NotFound):
        client.operation("0" * 32)


def test_conflict_while_the_sets_lock_is_held(api: Api, client: Client, web: ScaleSet) -> None:
    with api.world.service.locked("web", "test"):
        with pytest.raises(Conflict, match="busy"):
            client.scale("web", 3)
        with pytest.raises(Conflict):
            client.update("web", {"image": "tiny:2"}, wait=False)
    assert client.scale_set("web").capacity == 2


def test_unauthorized_with_a_wrong_token(transport: AppTransport, client: Client) -> None:
    with Client(URL, "not-the-token", transport=transport) as wrong:
        with pytest.raises(Unauthorized, match="bearer token") as caught:
            wrong.scale_sets()
        assert isinstance(caught.value, SecurityError)
        assert wrong.healthz().status == "ok"  # the one route without a token
    assert client.scale_sets() == []


def test_invalid_input(client: Client, web: ScaleSet) -> None:
    with pytest.raises(InvalidInput, match="capacity"):
        client.apply(document("bad", image="tiny:1", capacity=-1))
    with pytest.raises(InvalidInput, match="unknown key"):
        client.update("web", {"colour": "blue"})
    with pytest.raises(InvalidInput, match="nothing to update"):
        client.update("web", {"image": "tiny:1"})
    with pytest.raises(InvalidInput, match="PayloadTooLarge"):
        client.run_command("web", 0, "x" * 70000)
    with pytest.raises(InvalidInput, match="invalid scale set name"):
        client.scale_set("Web_1")
    with pytest.raises(InvalidInput, match="metadata.name"):
        client.apply({"spec": {}})
    with pytest.raises(InvalidInput, match="integers"):
        client.manual_upgrade("web", ["0"])  # type: ignore[list-item]
    assert client.scale_sets() == [client.scale_set("web")]  # nothing was changed


def test_a_name_stays_one_path_segment(client: Client, web: ScaleSet) -> None:
    with pytest.raises(InvalidInput, match="not one path segment"):
        client.scale_set("web/virtualMachines")  # the server would route %2F as a /
    with pytest.raises(InvalidInput, match="not one path segment"):
        client.delete("..")
    assert [s.name for s in client.scale_sets()] == ["web"]


def test_error_codes_name_the_classes() -> None:
    for name in ("InvalidInput", "NotFound", "Conflict", "EnvironmentProblem",
                 "OperationFailed", "SecurityError", "Unauthorized", "HypervisorError", "Gone",
                 "HypervisorUnavailable", "Timeout", "Unreachable"):
        exc = error_of(name, "text")
        assert type(exc) is getattr(errors, name) and exc.message == "text"
    by_status = {(code, status): type(error_of(code, "m", status=status))
                 for code, status in [("PayloadTooLarge", 413), ("MethodNotAllowed", 405),
                                      ("InternalError", 500), ("HttpError", 502),
                                      ("Unknown", 404), ("Unknown", 409), ("Unknown", 401)]}
    assert by_status == {("PayloadTooLarge", 413): InvalidInput,
                         ("MethodNotAllowed", 405): InvalidInput,
                         ("InternalError", 500): OperationFailed,
                         ("HttpError", 502): EnvironmentProblem, ("Unknown", 404): NotFound,
                         ("Unknown", 409): Conflict, ("Unknown", 401): Unauthorized}
    assert error_of("InternalError", "boom", status=500).message == "InternalError: boom"


# --- the boundary: what the network does ----------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connection_refused_is_an_environment_problem_with_a_hint() -> None:
    with Client(f"http://127.0.0.1:{_closed_port()}", TOKEN) as nowhere, \
            pytest.raises(EnvironmentProblem, match="cannot connect") as caught:
        nowhere.healthz()
    assert caught.value.hint is not None and "orch serve" in caught.value.hint


@pytest.mark.parametrize(("raised", "expected"), [
    (httpx.ReadTimeout("slow"), Timeout),
    (httpx.ConnectTimeout("no answer to SYN"), EnvironmentProblem),
    (httpx.RemoteProtocolError("server hung up"), EnvironmentProblem),
    (httpx.ReadError("connection reset"), EnvironmentProblem),
])
def test_no_httpx_error_escapes(raised: httpx.HTTPError, expected: type[Exception]) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise raised

    with Client(URL, TOKEN, transport=httpx.MockTransport(fail)) as broken, \
            pytest.raises(expected) as caught:
        broken.scale_sets()
    assert caught.value.__cause__ is raised


@pytest.mark.parametrize(("status", "body", "expected"), [
    (502, "<html>Bad Gateway</html>", EnvironmentProblem),
    (200, "not json", EnvironmentProblem),
    (200, '{"name": "web"}', EnvironmentProblem),  # not a ScaleSet: another version?
    (500, '{"error": {"code": "InternalError", "message": "KeyError: x"}}', OperationFailed),
])
def test_answers_that_are_not_the_api(status: int, body: str,
                                      expected: type[Exception]) -> None:
    answer = httpx.MockTransport(lambda request: httpx.Response(status, text=body))
    with Client(URL, TOKEN, transport=answer) as odd, pytest.raises(expected):
        odd.scale_set("web")


def _with_extra_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {**{k: _with_extra_keys(v) for k, v in value.items()}, "addedLater": 1}
    if isinstance(value, list):
        return [_with_extra_keys(v) for v in value]
    return value


class NewerServer(httpx.BaseTransport):
    """The app's answers with a key added to every JSON object, as a newer server's."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.inner.handle_request(request)
        if answer.headers.get("content-type") != "application/json":
            return answer
        return httpx.Response(answer.status_code, json=_with_extra_keys(answer.json()))


def test_keys_a_newer_server_adds_are_kept_not_refused(transport: AppTransport,
                                                       web: ScaleSet) -> None:
    with Client(URL, TOKEN, transport=NewerServer(transport)) as client:
        found = client.scale_set("web")
        assert found.model_extra == {"addedLater": 1}
        assert found.orchestrationServices[0].model_extra == {"addedLater": 1}
        assert [i.instanceId for i in client.instances("web")] == [0, 1]
        assert client.instance("web", 0).lastProbe is not None
        assert client.images()[0].ref == "tiny:1" and client.hosts()[0].name == "local"
        assert client.healthz().controller.passes == 0
        assert client.scale("web", 3).instanceCount == 3  # the operation and its result
        with pytest.raises(NotFound):  # an error body with more keys
            client.scale_set("nosuch")


def test_tls_the_servers_certificate_is_checked(api: Api, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=orch",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True, timeout=60)
    with served(api.http.app, tls=(cert, key)) as url:
        with Client(url, TOKEN) as untrusting, \
                pytest.raises(SecurityError, match="certificate is not trusted") as caught:
            untrusting.scale_sets()
        assert caught.value.hint is not None and "CA file" in caught.value.hint
        with Client(url, TOKEN, verify=cert) as trusting:
            assert trusting.scale_sets() == []


def test_bad_client_arguments() -> None:
    for url in ("localhost:8717", "ftp://host/", "http://"):
        with pytest.raises(InvalidInput, match="invalid API URL"):
            Client(url, TOKEN)
    for token in ("", "two words", "line\nbreak"):
        with pytest.raises(InvalidInput, match="token"):
            Client(URL, token)
    assert TOKEN not in repr(Client(URL, TOKEN))


def test_read_token(tmp_path: Path) -> None:
    path = tmp_path / "api-token"
    path.write_text(f"{TOKEN}\n")
    assert read_token(path) == TOKEN
    with pytest.raises(InvalidInput, match="cannot be read"):
        read_token(tmp_path / "missing")
    path.write_text("\n")
    with pytest.raises(InvalidInput, match="holds no token"):
        read_token(path)

