"""`orch serve` as a process, on libvirt's test driver (no VMs): it answers /healthz, and a
SIGTERM stops it the way api.serve says (controller, then operations), with exit 0, not
killed by the signal uvicorn raises again after its own shutdown.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.client import Client
from orchestrator.errors import EnvironmentProblem

ORCH = str(Path(sys.executable).with_name("orch"))
ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_sigterm_stops_orch_serve_with_exit_0(tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this tree's code, not the installed one
    with log.open("wb") as out:
        proc = subprocess.Popen([ORCH, "--state-dir", str(tmp_path / "state"), "--libvirt-uri",
                                 "test:///default", "serve", "--listen", f"127.0.0.1:{port}"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + DEADLINE
        with Client(f"http://127.0.0.1:{port}", "none-needed", timeout=5) as anonymous:
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    health = anonymous.healthz()
                    break
                except EnvironmentProblem:  # not listening yet
                    assert time.monotonic() < deadline, log.read_text()
                    try:  # returns at once if the process exits: reported above
                        proc.wait(timeout=0.1)
                    except subprocess.TimeoutExpired:
                        pass
        assert health.status == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE) == 0, log.read_text()
        text = log.read_text()
        assert text.index("orch serve: stopping") < text.index("orch serve: stopped"), text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=DEADLINE)
