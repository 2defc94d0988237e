"""The command line: bad input is one line on stderr, exit 2, and changes nothing;
environment problems exit 4; output formats."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from orchestrator.cli import main
from tests.world import snapshot


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
        raise SystemExit(0)
    out, err = capsys.readouterr()
    code = exc.value.code
    return (code if isinstance(code, int) else 1), out, err


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv("ORCH_STATE_DIR", str(state))
    # unreachable on purpose: bad input must be refused before libvirt is contacted
    monkeypatch.setenv("ORCH_LIBVIRT_URI", "qemu+unix:///system?socket=/nonexistent/sock")
    return state


BAD_CREATE = [
    ["--name", "../x", "--image", "tiny:1"],
    ["--name", "a</name>", "--image", "tiny:1"],
    ["--name", "Web", "--image", "tiny:1"],
    ["--name", "x" * 41, "--image", "tiny:1"],
    ["--name", "web\nx", "--image", "tiny:1"],
    ["--name", "wéb", "--image", "tiny:1"],
    ["--name", "web", "--image", "tiny"],
    ["--name", "web", "--image", "tiny:1", "--instance-count", "-1"],
    ["--name", "web", "--image", "tiny:1", "--instance-count", "many"],
    ["--name", "web", "--image", "tiny:1", "--max-batch-instance-percent", "0"],
    ["--name", "web", "--image", "tiny:1", "--max-unhealthy-instance-percent", "101"],
    ["--name", "web", "--image", "tiny:1", "--pause-time-between-batches", "5 seconds"],
    ["--name", "web", "--image", "tiny:1", "--upgrade-policy-mode", "Sometimes"],
    ["--name", "web", "--image", "tiny:1", "--memory", "1"],
    ["--name", "web", "--image", "tiny:1", "--vcpus", "0"],
    ["--name", "web", "--image", "tiny:1", "--data-disk-sizes-gb", "big"],
    ["--name", "web", "--image", "tiny:1", "--custom-data", "/nonexistent/file"],
    ["--name", "web", "--image", "tiny:1", "--network", "../etc"],
    ["--name", "web", "--image", "nope:1"],
]


@pytest.mark.parametrize("args", BAD_CREATE, ids=lambda a: " ".join(a)[:40])
def test_bad_create_input_exits_2_and_changes_nothing(
        capsys: pytest.CaptureFixture[str], env: Path, args: list[str]) -> None:
    assert run(capsys, "vmss", "list")[0] == 0  # an initialised, empty state
    before = snapshot(env)
    code, out, err = run(capsys, "vmss", "create", *args)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert out == ""
    assert snapshot(env) == before


@pytest.mark.parametrize("doc,problem", [
    (("apiVersion: orchestrator/v1\nkind: ScaleSet\nmetadata: {name: web}\n"
     "spec: {image: tiny:1, capacity: 1, colour: red}\n"), "unknown key"),
    (("apiVersion: orchestrator/v2\nkind: ScaleSet\nmetadata: {name: web}\n"
     "spec: {image: tiny:1, capacity: 1}\n"), "apiVersion"),
    (("apiVersion: orchestrator/v1\nkind: ScaleSet\nmetadata: {name: ../web}\n"
     "spec: {image: tiny:1, capacity: 1}\n"), "name"),
    (("apiVersion: orchestrator/v1\nkind: ScaleSet\nmetadata: {name: web}\n"
     "spec: {image: tiny:1, capacity: 99999999999999999999}\n"), "capacity"),
    ("{unclosed", "YAML"),
    ("", "no documents"),
    ("- just\n- a list\n", None),
])
def test_bad_yaml_exits_2(capsys: pytest.CaptureFixture[str], env: Path, tmp_path: Path,
                          doc: str, problem: str | None) -> None:
    path = tmp_path / "in.yaml"
    path.write_text(doc)
    code, _, err = run(capsys, "vmss", "apply", "-f", str(path))
    assert code == 2, err
    if problem:
        assert problem in err
    assert err.count("\n") == 1


def test_unreachable_libvirt_is_an_environment_problem(
        capsys: pytest.CaptureFixture[str], env: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    code, _, err = run(capsys, "image", "import", "--name", "tiny", "--version", "1",
                       "--file", str(disk))
    assert code == 0, err
    path = tmp_path / "web.yaml"
    path.write_text("apiVersion: orchestrator/v1\nkind: ScaleSet\nmetadata: {name: web}\n"
                    "spec: {image: tiny:1, capacity: 1}\n")
    code, _, err = run(capsys, "vmss", "apply", "-f", str(path))
    assert code == 4
    assert "hint" in err and err.count("\n") == 1


def test_unknown_set_is_exit_2(capsys: pytest.CaptureFixture[str], env: Path) -> None:
    code, _, err = run(capsys, "vmss", "show", "--name", "nothere")
    assert code == 2 and "not found" in err


def test_bad_instance_ids(capsys: pytest.CaptureFixture[str], env: Path) -> None:
    code, _, err = run(capsys, "vmss", "stop", "--name", "web", "--instance-ids", "1", "x")
    assert code == 2 and "invalid instance id 'x'" in err


def test_list_json_and_yaml(capsys: pytest.CaptureFixture[str], env: Path) -> None:
    code, out, _ = run(capsys, "vmss", "list", "-o", "json")
    assert code == 0 and json.loads(out) == []
    code, out, _ = run(capsys, "-o", "yaml", "image", "list")
    assert code == 0 and out.strip() == "[]"


def test_help_explains(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "vmss", "create", "--help")
    assert code == 0 and "--upgrade-policy-mode" in out and "--output" in out


def test_controller_once_with_nothing_to_do(capsys: pytest.CaptureFixture[str], env: Path) -> None:
    code, out, err = run(capsys, "controller", "run", "--once", "-o", "json")
    assert code == 0, err
    assert json.loads(out) == {"actions": [], "problems": []}


def test_image_registry_has_one_writer(capsys: pytest.CaptureFixture[str], env: Path,
                                       tmp_path: Path) -> None:
    from orchestrator import locks

    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    assert run(capsys, "image", "list")[0] == 0  # an initialised state
    with locks.hold(env / "locks" / "images.lock", what="the image registry", purpose="test"):
        code, _, err = run(capsys, "image", "import", "--name", "tiny", "--version", "1",
                           "--file", str(disk))
    assert code == 3 and "locked by pid" in err and "(test)" in err
    assert run(capsys, "image", "import", "--name", "tiny", "--version", "1",
               "--file", str(disk))[0] == 0
