"""`orch serve` on real tiny VMs, driven as its users drive it: the Python client
(``orchestrator.client``), curl (a shell user's view), and the pytest plugin
(``orchestrator.testing``'s ``scale_set`` fixture, loaded below).

One `orch serve` process runs for the module, on a fresh state dir with tiny:1 and tiny:2
built, on a free loopback port; the last test stops it with SIGTERM and checks it exits 0.
Every set is checked gone from libvirt after its deletion.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from orchestrator.client import Client, document
from orchestrator.errors import EnvironmentProblem, NotFound

from .conftest import ORCH, libvirt_objects, state_dir_with

if TYPE_CHECKING:  # imported by pytest_plugins below, before any test runs
    from orchestrator.testing import ScaleSets, Settings

pytestmark = pytest.mark.vm
pytest_plugins = ["orchestrator.testing"]  # a no-op where the entry point loaded it already

Record = Callable[[str, object], None]
NOTHING: dict[str, list[str]] = {"domains": [], "volumes": [], "hosts": []}
VERSION_ID = ". /etc/os-release; echo $VERSION_ID"
START_SECONDS = 60.0  # /healthz answering after the process started
STOP_SECONDS = 60.0  # exit after SIGTERM (its --stop-timeout is 30 s; nothing runs by then)
WAIT_SECONDS = 600.0  # any one operation, under TCG on 2 cores
HEALTHY_AFTER = re.compile(r"^(?P<name>\S+)-(?P<id>\d+): Healthy after (?P<s>[0-9.]+)s$")


@dataclass
class Serving:
    """The `orch serve` process of this module."""

    state_dir: Path
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    start_seconds: float
    created: list[str] = field(default_factory=list)  # deleted by the CLI if a test failed

    @property
    def token_file(self) -> Path:
        return self.state_dir / "api-token"

    def client(self) -> Client:
        return Client(self.url, self.token_file.read_text().strip())

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, then the exit code within STOP_SECONDS; killed (None) if it did not exit."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
        return None


def _wait_until_serving(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    with Client(url, "not-needed-for-healthz", timeout=5) as anonymous:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"orch serve exited {proc.returncode}:\n{log.read_text()}")
            try:
                anonymous.healthz()
                return
            except EnvironmentProblem:  # not listening yet
                if time.monotonic() > deadline:
                    raise AssertionError(f"orch serve not answering /healthz after "
                                         f"{START_SECONDS:g}s:\n{log.read_text()}") from None
                try:  # returns at once if the process exits: reported on the next turn
                    proc.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass


@pytest.fixture(scope="module")
def serving() -> Iterator[Serving]:
    with state_dir_with(("tiny", "--version", "1"), ("tiny", "--version", "2"),
                        prefix="orch-vmserve-") as orch:
        url = f"http://127.0.0.1:{_free_port()}"
        log = orch.state_dir / "serve.log"
        # the worktree's code, whatever the cwd: PYTHONPATH entries made absolute
        env = dict(os.environ)
        if env.get("PYTHONPATH"):
            env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve())
                                                for p in env["PYTHONPATH"].split(os.pathsep))
        started = time.monotonic()
        with log.open("wb") as out:  # a file, not a pipe nobody reads that could fill up
            # --interval 600: the controller makes its first pass at start only, so that no
            # pass holds a set's lock when a call of this test comes (that call would get 409)
            proc = subprocess.Popen(
                [ORCH, "--state-dir", str(orch.state_dir), "serve", "--listen",
                 url.removeprefix("http://"), "--interval", "600"],
                stdout=out, stderr=subprocess.STDOUT, env=env)
        serving = Serving(orch.state_dir, url, proc, log, 0.0)
        try:
            _wait_until_serving(url, proc, log)
            serving.start_seconds = time.monotonic() - started
            yield serving
        finally:
            _stop(proc)
            orch.created.extend(serving.created)  # state_dir_with deletes them, by the CLI


@pytest.fixture(scope="module")
def orch_settings(serving: Serving) -> Settings:
    """The plugin's settings: this module's server (instead of --orch-url and the rest)."""
    from orchestrator.testing import Settings

    return Settings(url=serving.url, token=serving.token_file.read_text().strip(),
                    ca_file=None, timeout=WAIT_SECONDS, prefix="servetest")


def boots(progress: list[str], set_name: str) -> dict[int, float]:
    """Seconds each instance took to become Healthy, from an operation's progress lines."""
    found = {}
    for line in progress:
        m = HEALTHY_AFTER.match(line)
        if m and m["name"] == set_name:
            found[int(m["id"])] = float(m["s"])
    return found


def curl(serving: Serving, *args: str) -> str:
    """curl as a shell user types it, the token read by the shell from the token file."""
    command = ('curl -sS --fail-with-body -H "Authorization: Bearer $(cat "$TOKEN_FILE")" '
               '"$@"')
    proc = subprocess.run(["bash", "-c", command, "curl", *args], capture_output=True,
                          text=True, timeout=60, check=False,
                          env={**os.environ, "TOKEN_FILE": str(serving.token_file)})
    assert proc.returncode == 0, f"curl {' '.join(args)}: {proc.returncode}\n{proc.stderr}"
    return proc.stdout


def timed(record_property: Record, key: str, started: float) -> None:
    record_property(key, round(time.monotonic() - started, 1))


def test_the_server_starts_with_a_private_token(serving: Serving,
                                                record_property: Record) -> None:
    record_property("serve_start_seconds", round(serving.start_seconds, 1))
    assert serving.token_file.stat().st_mode & 0o777 == 0o600
    with serving.client() as client:
        health = client.healthz()
        assert health.status == "ok" and health.controller.running
        assert [i.ref for i in client.images()] == ["tiny:1", "tiny:2"]


def test_manual_upgrade_of_one_instance_through_the_client_and_curl(
        serving: Serving, record_property: Record) -> None:
    name = f"serve-{uuid.uuid4().hex[:6]}"
    serving.created.append(name)
    with serving.client() as client:
        started = time.monotonic()
        op = client.apply(document(name, image="tiny:1", capacity=2), wait=False)
        created = client.wait(op, timeout=WAIT_SECONDS)
        timed(record_property, "create_2_wall_seconds", started)
        for seconds in boots(client.operation(op.id).progress, name).values():
            record_property("boot_seconds", seconds)
        assert (created.instanceCount, created.image) == (2, "tiny:1")
        assert created.upgradePolicy["mode"] == "Manual"

        updated = client.update(name, {"image": "tiny:2"})  # Manual: recorded, rolled by nobody
        assert (updated.image, updated.generation, updated.latestModelInstances) == (
            "tiny:2", 2, 0)
        started = time.monotonic()
        upgraded = client.manual_upgrade(name, [0], timeout=WAIT_SECONDS)
        timed(record_property, "manual_upgrade_1_wall_seconds", started)
        assert [(i.instanceId, i.image, i.latestModelApplied, i.healthState)
                for i in upgraded] == [(0, "tiny:2", True, "Healthy")]
        with pytest.raises(NotFound, match="no rolling upgrade"):  # a manual upgrade is none
            client.latest_rolling_upgrade(name)
        listed = {i.instanceId: i for i in client.instances(name)}
        assert sorted(listed) == [0, 1]
        assert (listed[0].image, listed[0].latestModelApplied, listed[0].modelGeneration) == (
            "tiny:2", True, 2)
        assert (listed[1].image, listed[1].latestModelApplied, listed[1].modelGeneration) == (
            "tiny:1", False, 1)
        assert {i.healthState for i in listed.values()} == {"Healthy"}

        started = time.monotonic()
        for instance_id, version in ((0, "2"), (1, "1")):  # inside the guests
            result = client.run_command(name, instance_id, VERSION_ID, timeout=120)
            assert (result.exitStatus, result.stdout, result.stderr) == (0, f"{version}\n", ""), (
                result)
        timed(record_property, "run_command_2_wall_seconds", started)

        # the same two reads with curl
        shown = json.loads(curl(serving, f"{serving.url}/v1/scaleSets/{name}/virtualMachines"))
        assert [(i["instanceId"], i["image"], i["latestModelApplied"]) for i in shown] == [
            (0, "tiny:2", True), (1, "tiny:1", False)]
        headers = curl(serving, "-D", "-", "-o", "/dev/null", "-X", "POST",
                       "-H", "Content-Type: application/json",
                       "-d", json.dumps({"script": VERSION_ID, "timeout": 120}),
                       f"{serving.url}/v1/scaleSets/{name}/virtualMachines/1/runCommand")
        assert headers.startswith("HTTP/1.1 202"), headers
        location = re.search(r"^location: (\S+)\r?$", headers, re.IGNORECASE | re.MULTILINE)
        assert location is not None, headers
        deadline = time.monotonic() + WAIT_SECONDS
        while (polled := json.loads(curl(serving, serving.url + location[1])))[
                "status"] == "Running":
            assert time.monotonic() < deadline, polled
            time.sleep(0.5)  # a shell user's polling loop: nothing to block on over HTTP
        assert (polled["status"], polled["kind"], polled["error"]) == (
            "Succeeded", "runCommand", None)
        assert polled["result"] == {"exitStatus": 0, "stdout": "1\n", "stderr": ""}

        started = time.monotonic()
        assert client.delete(name, timeout=WAIT_SECONDS) is None
        timed(record_property, "delete_wall_seconds", started)
        with pytest.raises(NotFound):
            client.scale_set(name)
    assert libvirt_objects(f"{name}-") == NOTHING


@pytest.fixture
def checked_gone(serving: Serving) -> Iterator[list[ScaleSets]]:
    """Stands before ``scale_set`` (so its teardown runs after the plugin's): every set the
    plugin made must be gone from libvirt once the plugin deleted it."""
    factories: list[ScaleSets] = []  # the test puts the plugin's factory here
    yield factories
    for sets in factories:
        for name in sets.made:
            assert libvirt_objects(f"{name}-") == NOTHING, name


def test_the_same_through_the_pytest_plugin(checked_gone: list[ScaleSets],
                                            scale_set: ScaleSets,
                                            record_property: Record) -> None:
    checked_gone.append(scale_set)
    started = time.monotonic()
    web = scale_set(image="tiny:1", capacity=1)
    timed(record_property, "plugin_create_1_wall_seconds", started)
    assert web.name.startswith("servetest-")
    assert [(i.instanceId, i.image, i.healthState) for i in web.instances()] == [
        (0, "tiny:1", "Healthy")]
    assert web.run(0, VERSION_ID).stdout == "1\n"
    assert web.update(image="tiny:2").latestModelInstances == 0
    started = time.monotonic()
    web.client.manual_upgrade(web.name, [0], timeout=WAIT_SECONDS)
    timed(record_property, "plugin_manual_upgrade_1_wall_seconds", started)
    result = web.run(0, VERSION_ID)
    assert (result.exitStatus, result.stdout) == (0, "2\n")
    assert web.get().latestModelInstances == 1


def test_sigterm_stops_the_server_with_exit_0(serving: Serving,
                                              record_property: Record) -> None:
    started = time.monotonic()
    code = _stop(serving.proc)
    timed(record_property, "serve_stop_seconds", started)
    assert code == 0, serving.log_tail()
    assert "orch serve: stopped" in serving.log.read_text()
