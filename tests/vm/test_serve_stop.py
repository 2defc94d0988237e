"""`orch serve` stopped by SIGTERM in the middle of long work, on real tiny VMs: it exits 0
within its stop timeout, says which operation it left, and the set's journal is left as a
killed command leaves it, so the next controller pass finishes the work (the half-made
instances removed, the capacity made anew and Healthy, the operation marked interrupted).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time

import pytest

from orchestrator.client import Client, document
from orchestrator.errors import EnvironmentProblem

from .conftest import ORCH, libvirt_objects, state_dir_with

pytestmark = pytest.mark.vm

DEADLINE = 120.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_sigterm_mid_create_leaves_the_work_to_the_next_controller_pass() -> None:
    with state_dir_with(("tiny", "--version", "1"), prefix="orch-vmstop-") as orch:
        name = orch.new_set_name()
        url = f"http://127.0.0.1:{_free_port()}"
        log = orch.state_dir / "serve.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [ORCH, "--state-dir", str(orch.state_dir), "serve", "--listen",
                 url.removeprefix("http://"), "--interval", "600", "--stop-timeout", "0"],
                stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + DEADLINE
            token_file = orch.state_dir / "api-token"
            while True:
                try:
                    if token_file.exists():
                        with Client(url, token_file.read_text().strip(), timeout=5) as probe:
                            probe.healthz()
                        break
                except EnvironmentProblem:
                    pass
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            with Client(url, token_file.read_text().strip()) as api:
                op = api.apply(document(name, image="tiny:1", capacity=2), wait=False)
                # the work has begun: an instance is being made
                while not any(": creating" in line for line in op.progress):
                    assert op.status == "Running", op
                    assert time.monotonic() < deadline, op
                    time.sleep(0.2)
                    op = api.operation(op.id)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        said = log.read_text()
        assert f"operation {op.id} (apply {name}) still running" in said, said

        # the next controller pass (here one `controller run --once`) finishes the create
        orch.run("controller", "run", "--once", "-o", "json", timeout=600)
        instances = orch.instances(name)
        # half-made instances are removed and the capacity made anew (new ids)
        assert len(instances) == 2 and {i["healthState"] for i in instances} == {"Healthy"}, \
            instances
        assert sorted(libvirt_objects(f"{name}-")["domains"]) == sorted(
            i["name"] for i in instances)
        kinds = {(o["kind"], o["status"]) for o in orch.json("vmss", "list-operations",
                                                           "--name", name)}
        assert ("create", "interrupted") in kinds, kinds
