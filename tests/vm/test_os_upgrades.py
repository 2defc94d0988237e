"""Real VMs: automatic OS upgrades by a running `orch controller run`. A set on `tiny:latest`
(tiny:1) follows `image build tiny --version 2` on its own (VERSION_ID read over SSH); then
`tiny:3 --broken` fails its first batch and the set returns to tiny:2, as the history says.

Its own state dir: the shared one of the other real-VM tests has tiny:3 already."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import Orch

pytestmark = pytest.mark.vm

ORCH = str(Path(sys.executable).with_name("orch"))
VERSION = ". /etc/os-release && echo $VERSION_ID"


@pytest.fixture
def own() -> Iterator[Orch]:
    if os.environ.get("ORCH_IN_LAB") != "1":
        pytest.fail("real-VM tests run inside the lab: `make test`")
    state_dir = Path(tempfile.mkdtemp(prefix="orch-vmosup-", dir="/var/tmp"))
    os.chmod(state_dir, 0o711)
    o = Orch(state_dir)
    o.run("image", "build", "tiny", "--version", "1")
    try:
        yield o
    finally:
        for name in o.created:
            o.run("vmss", "delete", "--name", name, check=False)
        shutil.rmtree(state_dir, ignore_errors=True)


def _wait(what: str, done: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if done():
            return time.monotonic() - started
        time.sleep(2)
    pytest.fail(f"{what}: not within {timeout:.0f}s")


def test_a_set_on_latest_follows_new_versions_and_returns_from_a_broken_one(own: Orch) -> None:
    name = own.new_set_name()
    own.run("vmss", "create", "--name", name, "--image", "tiny:latest", "--instance-count", "3",
            "--upgrade-policy-mode", "Rolling", "--max-batch-instance-percent", "34",
            "--max-unhealthy-instance-percent", "34",
            "--max-unhealthy-upgraded-instance-percent", "34",
            "--enable-auto-os-upgrade", "true", "--health-probe-fail-fast-after-probes", "2",
            timeout=400)
    assert {i["image"] for i in own.instances(name)} == {"tiny:1"}
    assert own.json("vmss", "show", "--name", name)["model"]["image"] == "tiny:latest"
    controller = subprocess.Popen([ORCH, "--state-dir", str(own.state_dir), "controller", "run",
                                   "--interval", "5"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
    try:
        own.run("image", "build", "tiny", "--version", "2")  # nothing else is asked
        took = _wait("rolled to tiny:2", lambda: all(
            i["image"] == "tiny:2" and i["healthState"] == "Healthy"
            for i in own.instances(name)) and any(
            h["result"] == "Succeeded" for h in own.json("vmss", "get-os-upgrade-history",
                                                         "--name", name)), 300)
        print(f"tiny:1 -> tiny:2 on its own in {took:.1f}s after the build")
        for inst in own.instances(name):
            out = own.sh(name, inst["instanceId"], VERSION)
            assert out["stdout"].strip() == "2", out

        own.run("image", "build", "tiny", "--version", "3", "--broken")
        took = _wait("returned from tiny:3", lambda: (own.json(
            "vmss", "get-os-upgrade-history", "--name", name)[0]["result"] == "RolledBack"), 400)
        print(f"tiny:3 failed and was rolled back {took:.1f}s after the build")
    finally:
        controller.terminate()
        try:
            controller.wait(timeout=120)
        except subprocess.TimeoutExpired:
            controller.kill()
            controller.wait(timeout=30)
    history = own.json("vmss", "get-os-upgrade-history", "--name", name)
    assert [(h["fromVersions"], h["targetVersion"], h["result"]) for h in history] == [
        (["tiny:2"], "tiny:3", "RolledBack"), (["tiny:1"], "tiny:2", "Succeeded")], history
    assert history[0]["rollback"]["toVersion"] == "tiny:2"
    assert len(history[0]["rollback"]["instanceIds"]) == 1  # the first batch, then Faulted
    for inst in own.instances(name):
        assert inst["image"] == "tiny:2" and inst["healthState"] == "Healthy", inst
        out = own.sh(name, inst["instanceId"], VERSION)
        assert out["stdout"].strip() == "2", out
