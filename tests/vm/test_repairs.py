"""Real VMs: automatic repairs by a running `orch controller run`. An instance whose health
endpoint is stopped from inside (run-command kills the guest's httpd) goes Unhealthy and is
repaired within the repair grace period plus a pass interval (and its boot): Replace puts a
new Healthy instance in its place, Restart brings the same one back Healthy."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from .conftest import Orch, controller_running

pytestmark = pytest.mark.vm

GRACE = 30  # PT30S, the shortest repair grace period
INTERVAL = 5  # seconds between the controller's passes
BOOT_MARGIN = 60  # a replacement or a restart boots and is probed Healthy under TCG


@pytest.fixture
def controller(orch: Orch) -> Iterator[subprocess.Popen[str]]:
    with controller_running(orch, interval=INTERVAL) as proc:
        yield proc


def _create(orch: Orch, action: str) -> str:
    name = orch.new_set_name()
    orch.run("vmss", "create", "--name", name, "--image", "tiny:1", "--instance-count", "2",
             "--enable-automatic-repairs", "true", "--automatic-repairs-grace-period",
             f"PT{GRACE}S", "--automatic-repairs-action", action, timeout=400)
    shown = orch.json("vmss", "show", "--name", name)
    assert shown["orchestrationServices"] == [
        {"serviceName": "AutomaticRepairs", "serviceState": "Running"}], shown
    return name


def _break_health(orch: Orch, name: str, instance_id: int) -> float:
    out = orch.sh(name, instance_id, "killall httpd; echo killed")
    assert out["stdout"].strip() == "killed", out
    return time.monotonic()


def _delete(orch: Orch, name: str) -> None:
    """`vmss delete` while the controller runs: a pass that holds the set's lock makes it
    exit 3 (documented), so it is tried again until the pass lets go (bounded)."""
    deadline = time.monotonic() + 120
    while True:
        done = orch.run("vmss", "delete", "--name", name, check=False)
        if done.returncode != 3 or time.monotonic() > deadline:
            assert done.returncode == 0, done.stderr
            return
        time.sleep(1)


def _repair_ops(orch: Orch, name: str) -> list[dict[str, object]]:
    return [op for op in orch.json("vmss", "list-operations", "--name", name)
            if op["kind"] == "repair"]


def test_replace_repairs_an_instance_whose_health_endpoint_stopped(
        orch: Orch, controller: subprocess.Popen[str]) -> None:
    name = _create(orch, "Replace")
    broke = _break_health(orch, name, 0)
    deadline = broke + GRACE + INTERVAL + BOOT_MARGIN
    while time.monotonic() < deadline:
        listed = {i["instanceId"]: i for i in orch.instances(name)}
        ops = _repair_ops(orch, name)
        if 0 not in listed and len(listed) == 2 and all(
                i["healthState"] == "Healthy" for i in listed.values()) and ops and all(
                op["status"] != "running" for op in ops):
            break
        assert controller.poll() is None, controller.stderr.read() if controller.stderr else ""
        time.sleep(2)
    else:
        pytest.fail(f"not replaced within {deadline - broke:.0f}s: {orch.instances(name)}")
    took = time.monotonic() - broke
    print(f"Replace: repaired {took:.1f}s after the health endpoint stopped")
    assert took >= GRACE  # not before its grace period
    [op] = _repair_ops(orch, name)
    assert op["status"] == "succeeded", op
    new = max(listed)
    out = orch.sh(name, new, "wget -q -O - http://127.0.0.1/health")
    assert out["stdout"].strip() == "ok", out
    _delete(orch, name)


def test_restart_repairs_the_same_instance(
        orch: Orch, controller: subprocess.Popen[str]) -> None:
    name = _create(orch, "Restart")
    before = orch.view(name, 1)["seedInstanceId"]
    broke = _break_health(orch, name, 1)
    deadline = broke + GRACE + INTERVAL + BOOT_MARGIN
    while time.monotonic() < deadline:
        ops = _repair_ops(orch, name)
        if ops and all(op["status"] != "running" for op in ops) and \
                orch.view(name, 1)["healthState"] == "Healthy":
            break
        time.sleep(2)
    else:
        pytest.fail(f"not restarted within {deadline - broke:.0f}s: {orch.instances(name)}")
    print(f"Restart: repaired {time.monotonic() - broke:.1f}s after the health endpoint stopped")
    assert sorted(i["instanceId"] for i in orch.instances(name)) == [0, 1]
    assert orch.view(name, 1)["seedInstanceId"] == before  # the same instance, restarted
    out = orch.sh(name, 1, "wget -q -O - http://127.0.0.1/health")
    assert out["stdout"].strip() == "ok", out
    assert [op["status"] for op in _repair_ops(orch, name)] == ["succeeded"]
    _delete(orch, name)
