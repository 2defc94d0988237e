"""Every command that shows something honours -o json (and yaml): the click command tree is
walked, and each command is run on the fake hypervisor with `-o json` after it and its stdout
parsed. A command added later must be listed here, as shown or as showing nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from orchestrator import ssh
from orchestrator.cli import cli as orch
from orchestrator.images import Registry
from orchestrator.labconfig import HostPlan, LabHost, LabStatus
from tests.world import World

from .fakecli import FakeCli, install

# commands whose stdout is not orch's to format: the guest's terminal, CMD's own output
NOT_RUN = {"vmss ssh": "an interactive SSH session", "lab exec": "its output is CMD's",
           "serve": "a server: it shows nothing, it serves (tests/api)"}
# commands that print nothing on stdout (a progress line on stderr): with -o json, nothing
SILENT = {"vmss delete", "image delete", "host remove"}
# shown, and read-only: also checked in YAML, which must say the same as the JSON
READ_ONLY = {"image list", "image show", "vmss list", "vmss show", "vmss list-instances",
             "vmss get-instance-view", "vmss list-operations", "vmss rolling-upgrade get-latest",
             "vmss boot-diagnostics get-boot-log",
             "vmss plan", "lab status", "lab hosts", "host list", "host show"}


def leaf_paths(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    paths: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        path = f"{prefix} {name}".strip()
        if isinstance(command, click.Group):
            paths.update(leaf_paths(command, path))
        else:
            paths[path] = command
    return paths


def test_every_command_accepts_output_after_it() -> None:
    for path, command in leaf_paths(orch).items():
        options = {o for p in command.params for o in getattr(p, "opts", [])}
        assert {"-o", "--output"} <= options, path


@pytest.fixture
def cli(world: World, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> FakeCli:
    world.register_image("tiny", "2")
    lab = LabStatus(namespace=False, virtlogd_pid=None, libvirtd_pid=None,
                    network_active=False, pool_active=False, pool_path=None,
                    domain_type="qemu", problems=())
    # the lab is another engineer's: none of its commands may touch the host here
    monkeypatch.setattr("orchestrator.lab.lab_up", lambda state_dir, hosts, progress: lab)
    monkeypatch.setattr("orchestrator.lab.lab_down", lambda state_dir, progress: lab)
    monkeypatch.setattr("orchestrator.lab.lab_status", lambda state_dir: lab)
    monkeypatch.setattr("orchestrator.lab.lab_hosts", lambda state_dir: [LabHost(
        plan=HostPlan(1), namespace=True, virtlogd_pid=1, libvirtd_pid=2, answers=True,
        network_active=True, pool_active=True, route=True)])
    # building a real image needs the host's tools (tests/vm builds); the output is the point
    monkeypatch.setattr(Registry, "build",
                        lambda self, recipe, version, **kw: self.get(f"{recipe}:{version}"))

    async def run_command(endpoint: ssh.Endpoint, command: str,
                          **kw: Any) -> ssh.CommandResult:
        return ssh.CommandResult(exit_status=0, stdout=f"ran {command}\n", stderr="",
                                 latency=0.01)

    monkeypatch.setattr(ssh, "run_command", run_command)
    return install(world, monkeypatch, capsys)


def test_every_showing_command_prints_json(cli: FakeCli, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    doc = tmp_path / "api.yaml"
    doc.write_text("apiVersion: orchestrator/v1\nkind: ScaleSet\nmetadata: {name: api}\n"
                   "spec: {image: tiny:1, capacity: 1}\n")
    done: dict[str, Any] = {}

    def show(path: str, *args: str) -> Any:
        code, out, err = cli.run(*path.split(), *args, "-o", "json")
        assert code == 0, (path, err)
        data = json.loads(out)
        if path in READ_ONLY:
            code, out_yaml, err = cli.run(*path.split(), *args, "-o", "yaml")
            assert code == 0 and yaml.safe_load(out_yaml) == data, (path, err)
        done[path] = data
        return data

    show("image build", "tiny", "--version", "2")
    show("image import", "--name", "imp", "--version", "1", "--file", str(disk))
    assert [i["ref"] for i in show("image list")] == ["imp:1", "tiny:1", "tiny:2"]
    assert show("image show", "tiny:1")["ref"] == "tiny:1"
    assert show("vmss create", "--name", "web", "--image", "tiny:1", "--instance-count", "2",
                "--upgrade-policy-mode", "Rolling")["capacity"] == 2
    assert [s["name"] for s in show("vmss apply", "-f", str(doc))] == ["api"]
    assert [s["name"] for s in show("vmss list")] == ["api", "web"]
    assert show("vmss show", "--name", "web")["generation"] == 1
    assert show("vmss get-os-upgrade-history", "--name", "web") == []
    assert show("vmss set-orchestration-service-state", "--name", "web", "--service-name",
                "AutomaticRepairs", "--action", "Suspend")["serviceState"] == "NotRunning"
    assert [i["healthState"] for i in show("vmss list-instances", "--name", "web")] == [
        "Healthy", "Healthy"]
    assert show("vmss get-instance-view", "--name", "web", "--instance-id", "0")["name"] == "web-0"
    assert show("vmss boot-diagnostics get-boot-log", "--name", "web", "--instance-id", "0")[
        "log"].startswith("[    0.000000] Linux version")
    assert show("vmss plan", "--name", "web", "--image", "tiny:2")["outcome"] == "Completed"
    assert show("vmss update", "--name", "web", "--image", "tiny:2")["generation"] == 2
    latest = show("vmss rolling-upgrade get-latest", "--name", "web")
    assert latest["runningStatus"]["code"] == "Completed"
    show("vmss rolling-upgrade start", "--name", "web")
    assert show("vmss run-command invoke", "--name", "web", "--instance-id", "0",
                "--scripts", "uname")["stdout"] == "ran uname\n"
    show("vmss update-instances", "--name", "web", "--instance-ids", "*")
    show("vmss reimage", "--name", "web", "--instance-ids", "0")
    for action in ("stop", "start", "restart", "deallocate"):
        assert show(f"vmss {action}", "--name", "web", "--instance-ids", "1")[0]["instanceId"] == 1
    assert show("vmss scale", "--name", "web", "--new-capacity", "3")["instanceCount"] == 3
    assert show("vmss delete-instances", "--name", "web", "--instance-ids", "2")["capacity"] == 2
    assert show("vmss list-operations", "--name", "web")[0]["kind"] == "create"
    # a rolling upgrade whose driver is gone: cancel stops it
    store = cli.world.store
    store.add_rolling_upgrade("web", target_generation=2, policy={}, progress={},
                              now="2027-01-15T08:00:00Z")
    assert show("vmss rolling-upgrade cancel", "--name", "web")["runningStatus"]["code"] == \
        "Cancelled"
    assert show("controller run", "--once") == {"actions": [], "problems": []}
    for path in ("lab up", "lab status", "lab down"):
        assert show(path)["up"] is False
    assert [h["uri"] for h in show("lab hosts")] == ["qemu+tcp://10.214.0.1/system"]
    hv = cli.world.add_host("h1", register=False)
    assert show("host add", "--name", "h1", "--uri", hv.uri)["state"] == "Ready"
    # lab-1: registered by `lab up` (the lab says it runs)
    assert [h["name"] for h in show("host list")] == ["h1", "lab-1", "local"]
    assert show("host cordon", "--name", "h1")["state"] == "Cordoned"
    assert show("host uncordon", "--name", "h1")["state"] == "Ready"
    assert show("host show", "--name", "h1")["faultDomain"] == "h1"
    for path, args in (("vmss delete", ["--name", "api"]), ("image delete", ["imp:1"]),
                       ("host remove", ["--name", "h1"])):
        code, out, err = cli.run(*path.split(), *args, "-o", "json")
        assert code == 0 and out == "", (path, err)
        done[path] = None

    assert set(done) | set(NOT_RUN) == set(leaf_paths(orch)), \
        "a command is neither shown here nor listed as not run"
    assert {p for p, data in done.items() if data is None} == SILENT
