"""The metrics file (--metrics-file / ORCH_METRICS_FILE): commands run through the CLI on the
fake hypervisor with the fake clock, the file parsed with prometheus_client's own parser and
its figures compared with what the commands did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator import metrics
from orchestrator.cli import controller as controller_cli
from tests.world import World, snapshot

from .fakecli import FakeCli, install

ROLLING = ["--upgrade-policy-mode", "Rolling", "--max-batch-instance-percent", "34",
           "--max-unhealthy-instance-percent", "34"]


@pytest.fixture
def cli(cli: FakeCli) -> FakeCli:
    cli.world.register_image("tiny", "2")
    return cli


@pytest.fixture
def prom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the metrics go: outside the state dir (``tmp_path`` is the world's)."""
    return tmp_path_factory.mktemp("textfile") / "orch.prom"


class Scrape:
    """The samples of a metrics file by (sample name, labels)."""

    def __init__(self, path: Path) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(path.read_text())}
        self.values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in self.families.values():
            for sample in family.samples:
                self.values[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        return self.values[(name, frozenset(labels.items()))]

    def names(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for n, labels in self.values if n == name]

    def instances(self, set_name: str) -> dict[tuple[str, str], float]:
        """orch_instances by (health_state, model_generation), zeros left out."""
        return {(l["health_state"], l["model_generation"]): self("orch_instances", **l)
                for l in self.names("orch_instances")
                if l["set"] == set_name and self("orch_instances", **l)}


def test_create_then_rolling_upgrade(cli: FakeCli, prom: Path) -> None:
    code, out, err = cli.run("--metrics-file", str(prom), "vmss", "create", "--name", "web",
                             "--image", "tiny:1", "--instance-count", "3", *ROLLING, "-o", "json")
    assert code == 0, err
    assert json.loads(out)["instanceCount"] == 3  # stdout is the command's own result
    m = Scrape(prom)
    assert m.instances("web") == {("Healthy", "1"): 3}
    assert m("orch_set_capacity", set="web") == 3
    assert m("orch_set_generation", set="web") == 1
    assert m("orch_set_latest_model_instances", set="web") == 3
    # the fake prober answers in 50 ms
    assert {i: m("orch_probe_latency_seconds", set="web", instance_id=i)
            for i in "012"} == {"0": 0.05, "1": 0.05, "2": 0.05}
    assert m.names("orch_rolling_upgrade_progress") == []
    assert m("orch_operations_total", set="web", kind="create", status="succeeded") == 1
    # the fake guests boot in 6.5 s; the journal keeps whole seconds
    created = m("orch_operation_duration_seconds_sum", set="web", kind="create",
                status="succeeded")
    assert 6 <= created <= 15
    assert m("orch_operation_duration_seconds_bucket", set="web", kind="create",
             status="succeeded", le="5.0") == 0
    assert m("orch_operation_duration_seconds_bucket", set="web", kind="create",
             status="succeeded", le="15.0") == 1
    assert m.families["orch_operation_duration_seconds"].type == "histogram"
    assert m.families["orch_operations"].type == "counter"

    code, _, err = cli.run("--metrics-file", str(prom), "vmss", "update", "--name", "web",
                           "--image", "tiny:2", "-o", "json")
    assert code == 0, err
    m = Scrape(prom)
    assert m.instances("web") == {("Healthy", "2"): 3}
    assert m("orch_set_generation", set="web") == 2
    assert m("orch_set_latest_model_instances", set="web") == 3
    assert {state: m("orch_rolling_upgrade_progress", set="web", state=state)
            for state in ("successful", "failed", "in_progress", "pending")} == {
        "successful": 3, "failed": 0, "in_progress": 0, "pending": 0}
    assert {code: m("orch_rolling_upgrade_status", set="web", code=code)
            for code in ("RollingForward", "Completed", "Faulted", "Cancelled")} == {
        "RollingForward": 0, "Completed": 1, "Faulted": 0, "Cancelled": 0}
    # the update and the rolling upgrade it starts are one operation of the journal
    assert m("orch_operations_total", set="web", kind="update", status="succeeded") == 1
    assert [l for l in m.names("orch_operations_total") if l["kind"] == "rolling-upgrade"] == []
    assert m.names("orch_operations_running") == []


def test_faulted_upgrade_exit_1_still_writes_the_file(cli: FakeCli, prom: Path) -> None:
    assert cli.run("vmss", "create", "--name", "web", "--image", "tiny:1",
                   "--instance-count", "3", *ROLLING)[0] == 0
    assert not prom.exists()
    cli.world.prober.broken_images.add(str(cli.world.registry.get("tiny:2").disk))
    code, _, err = cli.run("--metrics-file", str(prom), "vmss", "update", "--name", "web",
                           "--image", "tiny:2")
    assert code == 1 and "Faulted" in err
    m = Scrape(prom)
    # the first batch (instance 0) came up unhealthy on generation 2; the others wait
    assert m.instances("web") == {("Healthy", "1"): 2, ("Unhealthy", "2"): 1}
    assert m("orch_set_latest_model_instances", set="web") == 1
    assert m("orch_rolling_upgrade_status", set="web", code="Faulted") == 1
    assert m("orch_rolling_upgrade_status", set="web", code="Completed") == 0
    assert m("orch_rolling_upgrade_progress", set="web", state="failed") == 1
    assert m("orch_rolling_upgrade_progress", set="web", state="pending") == 2
    assert m("orch_rolling_upgrade_progress", set="web", state="successful") == 0


def test_env_variable_and_failed_lookups(cli: FakeCli, prom: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_METRICS_FILE", str(prom))
    assert cli.run("vmss", "create", "--name", "web", "--image", "tiny:1",
                   "--instance-count", "2")[0] == 0
    assert Scrape(prom).instances("web") == {("Healthy", "1"): 2}
    prom.unlink()
    before = snapshot(cli.state_dir)
    code, _, err = cli.run("vmss", "show", "--name", "nothere")
    assert code == 2 and err.count("\n") == 1
    assert Scrape(prom).instances("web") == {("Healthy", "1"): 2}  # written, from the store
    assert snapshot(cli.state_dir) == before


@pytest.mark.parametrize("where", ["missing-dir", "a-directory"])
def test_unusable_path_is_bad_input(cli: FakeCli, tmp_path: Path, where: str) -> None:
    assert cli.run("vmss", "list")[0] == 0
    before = snapshot(cli.state_dir)
    path = tmp_path / "nope" / "orch.prom" if where == "missing-dir" else tmp_path
    code, out, err = cli.run("--metrics-file", str(path), "vmss", "create", "--name", "web",
                             "--image", "tiny:1", "--instance-count", "1")
    assert code == 2, err
    assert err.startswith("error: --metrics-file") and err.count("\n") == 1, err
    assert out == ""
    assert snapshot(cli.state_dir) == before
    assert not (tmp_path / "nope").exists()


def test_write_failure_is_one_warning_not_a_failure(cli: FakeCli, prom: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: str, registry: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(metrics, "write_to_textfile", refuse)
    code, out, err = cli.run("--metrics-file", str(prom), "vmss", "list", "-o", "json")
    assert code == 0 and json.loads(out) == []
    assert err.count("\n") == 1
    assert err.startswith("[") and "warning: metrics file not written: cannot write metrics " \
        f"file {prom}: Permission denied" in err
    code, out, err = cli.run("--log-format", "json", "--metrics-file", str(prom),
                             "vmss", "list", "-o", "json")
    assert code == 0 and json.loads(out) == []
    record = json.loads(err)
    assert record["level"] == "warning" and "Permission denied" in record["message"]


def test_controller_writes_after_each_pass(cli: FakeCli, prom: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.run("vmss", "create", "--name", "web", "--image", "tiny:1",
                   "--instance-count", "3", *ROLLING)[0] == 0
    # recorded only: the controller rolls it out
    assert cli.run("vmss", "update", "--name", "web", "--image", "tiny:2", "--no-wait")[0] == 0
    seen: list[Scrape] = []

    def pause(seconds: float) -> bool:
        assert seconds == 15
        seen.append(Scrape(prom))  # written by the pass, before the command ends
        return len(seen) == 2

    monkeypatch.setattr(controller_cli, "pause_between_passes", pause)
    code, _, err = cli.run("--metrics-file", str(prom), "controller", "run")
    assert code == 0, err
    first, second = seen
    assert first.instances("web") == {("Healthy", "2"): 3}
    assert first("orch_rolling_upgrade_progress", set="web", state="successful") == 3
    assert first("orch_rolling_upgrade_status", set="web", code="Completed") == 1
    assert first("orch_operations_total", set="web", kind="resume", status="succeeded") == 1
    # the second pass found nothing to do but ran (its resume check is in the journal)
    assert second("orch_operations_total", set="web", kind="resume", status="succeeded") == 2
    assert second.instances("web") == {("Healthy", "2"): 3}


def test_no_state_database_is_made_for_metrics(tmp_path: Path, prom: Path, world: World,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    cli = install(world, monkeypatch, capsys)
    state = tmp_path / "fresh-state"
    monkeypatch.setenv("ORCH_STATE_DIR", str(state))
    code, out, _ = cli.run("--metrics-file", str(prom), "vmss", "--help")
    assert code == 0 and "create" in out
    assert not state.exists()
    m = Scrape(prom)
    assert "orch_instances" in m.families and m.values == {}


def test_repairs_are_counted(cli: FakeCli, prom: Path) -> None:
    world = cli.world
    assert cli.run("vmss", "create", "--name", "web", "--image", "tiny:1", "--instance-count",
                   "2", "--enable-automatic-repairs", "true", "--automatic-repairs-grace-period",
                   "PT30S", "--automatic-repairs-action", "Restart")[0] == 0
    world.prober.unhealthy.add("web-0")  # and it stays so: each repair fails
    for _ in range(4):
        cli.run("--metrics-file", str(prom), "controller", "run", "--once")  # exit 1: problems
        world.clock.advance(31)
    scrape = Scrape(prom)
    assert scrape("orch_repairs_total", set="web", action="Restart", result="failed") == 3
    assert scrape("orch_repairs_total", set="web", action="Restart", result="repaired") == 0
    assert scrape("orch_operations_total", set="web", kind="repair", status="failed") == 3
    assert scrape("orch_automatic_repairs_suspended", set="web") == 1  # the third suspended it
