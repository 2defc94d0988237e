"""Every route of the HTTP API on its happy path: what it answers is what the CLI prints
with ``-o json`` for the same use case (the ``cli`` fixture runs `orch` on the same world),
and long work ends in an operation whose result is that form."""

from __future__ import annotations

from importlib import resources
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator import ssh
from tests.api.conftest import Api, cli_json
from tests.unit.fakecli import FakeCli

OPERATION_KEYS = ["endedAt", "error", "id", "kind", "progress", "result", "scaleSet",
                  "startedAt", "status"]


def instances_by_id(cli: FakeCli, name: str = "web") -> dict[int, dict[str, Any]]:
    listed = cli_json(cli, "vmss", "list-instances", "--name", name)
    return {i["instanceId"]: i for i in listed}


# --- the service ------------------------------------------------------------------------------
def test_healthz_answers_without_a_token(api: Api) -> None:
    answer = api.anonymous.get("/healthz")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "controller": {
        "running": False, "passes": 0, "lastPassAt": None, "lastProblems": []}}


@pytest.mark.parametrize(("path", "name", "media"), [
    ("/", "index.html", "text/html"), ("/portal.js", "portal.js", "text/javascript"),
    ("/portal.css", "portal.css", "text/css"), ("/favicon.svg", "favicon.svg", "image/svg+xml")])
def test_the_portal_files_need_no_token(api: Api, path: str, name: str, media: str) -> None:
    answer = api.anonymous.get(path)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith(media)
    assert answer.content == resources.files("orchestrator.api").joinpath(
        "portal", name).read_bytes()


def test_metrics_are_the_metrics_file_of_the_cli(api: Api, cli: FakeCli,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    api.create("web", count=2)
    answer = api.http.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    capacity = {s.labels["set"]: s.value for s in families["orch_set_capacity"].samples}
    assert capacity == {"web": 2}
    metrics_file = cli.state_dir / "metrics.prom"
    monkeypatch.setenv("ORCH_METRICS_FILE", str(metrics_file))
    cli_json(cli, "vmss", "list")  # writes the metrics file when it ends
    assert api.http.get("/metrics").text == metrics_file.read_text()


# --- images and hosts -------------------------------------------------------------------------
def test_images_are_image_list(api: Api, cli: FakeCli) -> None:
    api.world.register_image("tiny", "2")
    answer = api.http.get("/v1/images")
    assert answer.status_code == 200
    assert answer.json() == cli_json(cli, "image", "list")
    assert [i["ref"] for i in answer.json()] == ["tiny:1", "tiny:2"]


def test_hosts_are_host_list(api: Api, cli: FakeCli) -> None:
    api.world.add_host("h1", fault_domain="fd-1")
    api.create("web", count=1)
    answer = api.http.get("/v1/hosts")
    assert answer.status_code == 200
    assert answer.json() == cli_json(cli, "host", "list")
    assert [h["name"] for h in answer.json()] == ["h1"]


# --- scale sets -------------------------------------------------------------------------------
def test_put_creates_a_set_and_its_result_is_vmss_show(api: Api, cli: FakeCli) -> None:
    op = api.create("web", count=2)
    assert sorted(op) == OPERATION_KEYS
    assert (op["kind"], op["scaleSet"], op["error"]) == ("apply", "web", None)
    assert op["result"] == cli_json(cli, "vmss", "show", "--name", "web")
    assert op["result"]["instanceCount"] == 2
    assert sorted(api.world.hv.domains) == ["web-0", "web-1"]


def test_put_of_an_existing_set_brings_it_to_the_document(api: Api, cli: FakeCli) -> None:
    api.create("web", count=2)
    same = api.create("web", count=2)["result"]
    assert same == cli_json(cli, "vmss", "show", "--name", "web")
    assert same["generation"] == 1
    grown = api.create("web", count=3)["result"]
    assert (grown["capacity"], grown["instanceCount"], grown["generation"]) == (3, 3, 1)
    assert grown == cli_json(cli, "vmss", "show", "--name", "web")


def test_get_sets_and_one_set_are_vmss_list_and_show(api: Api, cli: FakeCli) -> None:
    api.create("web", count=1)
    api.create("db", count=1)
    listed = api.http.get("/v1/scaleSets")
    assert listed.status_code == 200
    assert listed.json() == cli_json(cli, "vmss", "list")
    assert [s["name"] for s in listed.json()] == ["db", "web"]
    shown = api.http.get("/v1/scaleSets/web")
    assert shown.status_code == 200
    assert shown.json() == cli_json(cli, "vmss", "show", "--name", "web")


def test_patch_changes_the_image_like_vmss_update(api: Api, cli: FakeCli) -> None:
    api.create("web", count=2)
    api.world.register_image("tiny", "2")
    result = api.succeeded(api.http.patch("/v1/scaleSets/web", json={"image": "tiny:2"}))
    assert (result["generation"], result["model"]["image"]) == (2, "tiny:2")
    assert result == cli_json(cli, "vmss", "show", "--name", "web")
    # Manual: the instances stay on generation 1 until manualupgrade
    assert [i["latestModelApplied"] for i in instances_by_id(cli).values()] == [False, False]


def test_patch_merges_into_the_current_document(api: Api) -> None:
    api.create("web", count=1, tags={"team": "a", "tier": "web"})
    before = api.http.get("/v1/scaleSets/web").json()
    result = api.succeeded(api.http.patch("/v1/scaleSets/web", json={
        "healthProbe": {"port": 2222}, "tags": {"team": None, "owner": "b"},
        "upgradePolicy": {"rollingUpgradePolicy": {"maxBatchInstancePercent": 50}}}))
    probe, policy = result["model"]["healthProbe"], result["upgradePolicy"]
    assert probe == {**before["model"]["healthProbe"], "port": 2222}
    assert result["model"]["tags"] == {"tier": "web", "owner": "b"}  # null removed "team"
    assert policy["mode"] == before["upgradePolicy"]["mode"]
    assert policy["rollingUpgradePolicy"] == {
        **before["upgradePolicy"]["rollingUpgradePolicy"], "maxBatchInstancePercent": 50}
    assert result["model"]["image"] == "tiny:1"


def test_patch_of_the_capacity_scales(api: Api, cli: FakeCli) -> None:
    api.create("web", count=1)
    result = api.succeeded(api.http.patch("/v1/scaleSets/web", json={"capacity": 3}))
    assert (result["capacity"], result["instanceCount"]) == (3, 3)
    assert result == cli_json(cli, "vmss", "show", "--name", "web")


def test_delete_removes_the_set_and_what_it_owns(api: Api, cli: FakeCli) -> None:
    api.create("web", count=2)
    op = api.wait(api.http.delete("/v1/scaleSets/web"))
    assert (op["status"], op["kind"], op["result"]) == ("Succeeded", "delete", None)
    assert api.http.get("/v1/scaleSets/web").status_code == 404
    assert cli_json(cli, "vmss", "list") == []
    assert api.world.resources() == (set(), set(), set())


def test_scale_is_vmss_scale(api: Api, cli: FakeCli) -> None:
    api.create("web", count=2)
    result = api.succeeded(api.http.post("/v1/scaleSets/web/scale", json={"capacity": 3}))
    assert (result["capacity"], result["instanceCount"]) == (3, 3)
    assert result == cli_json(cli, "vmss", "show", "--name", "web")
    result = api.succeeded(api.http.post("/v1/scaleSets/web/scale", json={"capacity": 1}))
    assert result["instanceCount"] == 1
    assert sorted(api.world.hv.domains) == ["web-0"]


# --- instances --------------------------------------------------------------------------------
def test_virtual_machines_are_list_instances(api: Api, cli: FakeCli) -> None:
    api.create("web", count=2)
    probes = len(api.world.prober.probes)
    answer = api.http.get("/v1/scaleSets/web/virtualMachines")
    assert answer.status_code == 200
    assert len(api.world.prober.probes) == probes + 2  # refreshed by default, as the CLI
    assert answer.json() == cli_json(cli, "vmss", "list-instances", "--name", "web")
    assert [i["name"] for i in answer.json()] == ["web-0", "web-1"]
    probes = len(api.world.prober.probes)
    recorded = api.http.get("/v1/scaleSets/web/virtualMachines", params={"refresh": "false"})
    assert recorded.status_code == 200
    assert len(api.world.prober.probes) == probes  # what is recorded: no probe
    assert recorded.json() == answer.json()


def test_one_virtual_machine_is_get_instance_view(api: Api, cli: FakeCli) -> None:
    api.create("web", count=2)
    answer = api.http.get("/v1/scaleSets/web/virtualMachines/1")
    assert answer.status_code == 200
    view = answer.json()
    shown = cli_json(cli, "vmss", "get-instance-view", "--name", "web", "--instance-id", "1")
    # each probes once more: the probe's time moves on, nothing else
    assert sorted(view["lastProbe"]) == sorted(shown["lastProbe"])
    assert {**view, "lastProbe": None} == {**shown, "lastProbe": None}
    assert (view["instanceId"], view["name"], view["bootDiagnostics"]) == (1, "web-1", None)


# the action, the instance's powerState after it, its domain's state
POWER = [("poweroff", "stopped", "stopped"), ("deallocate", "deallocated", "stopped"),
         ("restart", "running", "running")]


@pytest.mark.parametrize(("action", "power", "domain"), POWER)
def test_power_actions_are_the_cli_power_commands(api: Api, cli: FakeCli, action: str,
                                                  power: str, domain: str) -> None:
    api.create("web", count=2)
    calls = len(api.world.hv.calls)
    result = api.succeeded(api.http.post(f"/v1/scaleSets/web/{action}",
                                         json={"instanceIds": [1]}))
    made = [c for c in api.world.hv.calls[calls:] if c[0] in ("shutdown", "start")]
    assert made == [("shutdown", "web-1")] + ([("start", "web-1")] if action == "restart"
                                              else [])
    listed = instances_by_id(cli)
    assert result == [listed[1]]
    assert result[0]["powerState"] == power
    assert api.world.hv.domain_state("web-1").value == domain
    assert api.world.hv.domain_state("web-0").value == "running"


def test_start_without_instance_ids_starts_every_instance(api: Api, cli: FakeCli) -> None:
    api.create("web", count=2)
    api.succeeded(api.http.post("/v1/scaleSets/web/poweroff", json={"instanceIds": [0, 1]}))
    assert {d.state.value for d in api.world.hv.list_domains()} == {"stopped"}
    result = api.succeeded(api.http.post("/v1/scaleSets/web/start"))
    assert result == list(instances_by_id(cli).values())
    assert [(i["powerState"], i["healthState"]) for i in result] == [("running", "Healthy")] * 2


@pytest.mark.parametrize("action", ["reimage", "reimageall"])
def test_reimage_is_vmss_reimage(api: Api, cli: FakeCli, action: str) -> None:
    api.create("web", count=2, dataDisks=[{"lun": 0, "sizeGiB": 1}])
    seeds = {i: api.http.get(f"/v1/scaleSets/web/virtualMachines/{i}").json()[
        "seedInstanceId"] for i in (0, 1)}
    calls = len(api.world.hv.calls)
    result = api.succeeded(api.http.post(f"/v1/scaleSets/web/{action}",
                                         json={"instanceIds": [0]}))
    made = api.world.hv.calls[calls:]
    assert result == [instances_by_id(cli)[0]]
    after = {i: api.http.get(f"/v1/scaleSets/web/virtualMachines/{i}").json()[
        "seedInstanceId"] for i in (0, 1)}
    assert after[0] != seeds[0] and after[1] == seeds[1]  # a fresh cloud-init identity
    # reimageall recreates the data disks too, reimage keeps them
    wiped = ("delete_volume", "web-0-data0.qcow2") in made
    assert wiped == (action == "reimageall")
    assert ("delete_volume", "web-1-data0.qcow2") not in made


def test_manualupgrade_is_update_instances(api: Api, cli: FakeCli) -> None:
    api.create("web", count=2)
    api.world.register_image("tiny", "2")
    api.succeeded(api.http.patch("/v1/scaleSets/web", json={"image": "tiny:2"}))
    result = api.succeeded(api.http.post("/v1/scaleSets/web/manualupgrade",
                                         json={"instanceIds": [0]}))
    listed = instances_by_id(cli)
    assert result == [listed[0]]
    assert (listed[0]["latestModelApplied"], listed[0]["image"]) == (True, "tiny:2")
    assert listed[1]["latestModelApplied"] is False


def test_delete_instances_is_delete_instances(api: Api, cli: FakeCli) -> None:
    api.create("web", count=3)
    result = api.succeeded(api.http.post("/v1/scaleSets/web/delete",
                                         json={"instanceIds": [1]}))
    assert result == cli_json(cli, "vmss", "show", "--name", "web")
    assert (result["capacity"], result["instanceCount"]) == (2, 2)
    assert sorted(api.world.hv.domains) == ["web-0", "web-2"]


def test_run_command_is_run_command_invoke(api: Api, cli: FakeCli,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[tuple[str, str]] = []

    async def run_command(endpoint: ssh.Endpoint, command: str,
                          **kw: Any) -> ssh.CommandResult:
        ran.append((endpoint.host, command))
        return ssh.CommandResult(exit_status=3, stdout=f"ran {command}\n", stderr="oops\n",
                                 latency=0.01)

    monkeypatch.setattr(ssh, "run_command", run_command)
    api.create("web", count=2)
    op = api.wait(api.http.post("/v1/scaleSets/web/virtualMachines/1/runCommand",
                                json={"script": "uname -a", "timeout": 60}))
    assert (op["status"], op["kind"]) == ("Succeeded", "runCommand")
    assert op["result"] == {"exitStatus": 3, "stdout": "ran uname -a\n", "stderr": "oops\n"}
    assert op["result"] == cli_json(cli, "vmss", "run-command", "invoke", "--name", "web",
                                    "--instance-id", "1", "--scripts", "uname -a")
    address = api.http.get("/v1/scaleSets/web/virtualMachines/1").json()["ipAddress"]
    assert ran == [(address, "uname -a")] * 2


# --- rolling upgrades -------------------------------------------------------------------------
def test_os_rolling_upgrade_and_its_latest_are_the_cli_forms(api: Api, cli: FakeCli) -> None:
    api.create("web", count=2)
    api.world.register_image("tiny", "2")
    api.succeeded(api.http.patch("/v1/scaleSets/web", json={"image": "tiny:2"}))
    api.succeeded(api.http.patch("/v1/scaleSets/web", json={"upgradePolicy": {"mode": "Rolling"}}))
    op = api.wait(api.http.post("/v1/scaleSets/web/osRollingUpgrade"))
    assert (op["status"], op["kind"]) == ("Succeeded", "osRollingUpgrade"), op
    latest = cli_json(cli, "vmss", "rolling-upgrade", "get-latest", "--name", "web")
    assert op["result"] == latest
    assert latest["runningStatus"]["code"] == "Completed"
    answer = api.http.get("/v1/scaleSets/web/rollingUpgrades/latest")
    assert answer.status_code == 200
    assert answer.json() == latest
    assert all(i["latestModelApplied"] for i in instances_by_id(cli).values())


def test_cancel_stops_an_upgrade_nobody_drives(api: Api, cli: FakeCli) -> None:
    api.create("web", count=1)
    # the record of an upgrade whose process died: the set's lock is free
    api.world.store.add_rolling_upgrade("web", target_generation=2, policy={}, progress={},
                                        now="2027-01-15T08:00:00Z")
    answer = api.http.post("/v1/scaleSets/web/rollingUpgrades/cancel")
    assert answer.status_code == 200, answer.text
    assert answer.json()["runningStatus"]["code"] == "Cancelled"
    assert answer.json() == cli_json(cli, "vmss", "rolling-upgrade", "get-latest", "--name",
                                     "web")


# --- operations -------------------------------------------------------------------------------
def test_an_operation_is_kept_and_shown_by_its_id(api: Api) -> None:
    answer = api.http.put("/v1/scaleSets/web", json={
        "apiVersion": "orchestrator/v1", "kind": "ScaleSet", "metadata": {"name": "web"},
        "spec": {"image": "tiny:1", "capacity": 1}})
    assert answer.status_code == 202
    started = answer.json()
    assert sorted(started) == OPERATION_KEYS
    assert answer.headers["location"] == f"/v1/operations/{started['id']}"
    op = api.wait(answer)
    assert op["id"] == started["id"]
    assert op["startedAt"] <= op["endedAt"]
    assert any("web-0" in line for line in op["progress"]), op["progress"]
    again = api.http.get(f"/v1/operations/{op['id']}")
    assert again.status_code == 200
    assert again.json() == op
