"""Real VMs: automatic OS upgrades by a running `orch controller run`. A set on `tiny:latest`
(tiny:1) follows `image build tiny --version 2` on its own (VERSION_ID read over SSH); then
`tiny:3 --broken` fails its first batch and the set returns to tiny:2, as the history says.

Its own state dir: the shared one of the other real-VM tests has tiny:3 already."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from .conftest import Orch, controller_running, state_dir_with

pytestmark = pytest.mark.vm

VERSION = ". /etc/os-release && echo $VERSION_ID"


@pytest.fixture
def own() -> Iterator[Orch]:
    with state_dir_with(("tiny", "--version", "1"), prefix="orch-vmosup-") as o:
        yield o


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
    with controller_running(own, interval=5):
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
    history = own.json("vmss", "get-os-upgrade-history", "--name", name)
    assert [(h["fromVersions"], h["targetVersion"], h["result"]) for h in history] == [
        (["tiny:2"], "tiny:3", "RolledBack"), (["tiny:1"], "tiny:2", "Succeeded")], history
    assert history[0]["rollback"]["toVersion"] == "tiny:2"
    assert len(history[0]["rollback"]["instanceIds"]) == 1  # the first batch, then Faulted
    for inst in own.instances(name):
        assert inst["image"] == "tiny:2" and inst["healthState"] == "Healthy", inst
        out = own.sh(name, inst["instanceId"], VERSION)
        assert out["stdout"].strip() == "2", out
