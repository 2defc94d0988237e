"""`orch serve` as a process, on libvirt's test driver: it makes its token file (0600), prints
the portal link with that token, answers /healthz without a token and everything else only
with it, runs controller passes beside the API, and stops cleanly on SIGTERM (exit 0).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.libvirt

ORCH = str(Path(sys.executable).with_name("orch"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get(url: str, *, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def until(check: Any, *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    port = free_port()
    env = {**os.environ, "ORCH_LOG_FORMAT": "text"}
    for name in ("ORCH_METRICS_FILE", "ORCH_NETWORK", "ORCH_POOL"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [ORCH, "--state-dir", str(tmp_path / "state"), "--libvirt-uri", "test:///default",
         "--domain-type", "qemu", "serve", "--listen", f"127.0.0.1:{port}", "--interval", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        yield proc, f"http://127.0.0.1:{port}", tmp_path / "state" / "api-token"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def test_serve_answers_with_its_token_runs_the_controller_and_stops_on_sigterm(
        served: tuple[subprocess.Popen[str], str, Path]) -> None:
    proc, url, token_file = served
    until(lambda: get(f"{url}/healthz")[0] == 200, timeout=60, what="/healthz")
    token = token_file.read_text().strip()
    assert len(token) >= 32
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

    assert get(f"{url}/v1/scaleSets")[0] == 401
    assert get(f"{url}/v1/scaleSets", token=token + "x")[0] == 401
    assert get(f"{url}/v1/scaleSets", token=token) == (200, [])
    # the controller loop runs beside the API: its passes show in /healthz
    health = until(lambda: (h := get(f"{url}/healthz")[1])["controller"]["passes"] >= 2 and h,
                   timeout=60, what="two controller passes")
    assert health["controller"]["running"] is True and health["controller"]["lastProblems"] == []

    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"{url}/#token={token}" in err  # the portal link, printed on start
    assert "orch serve: stopped" in err
    with pytest.raises(OSError):
        get(f"{url}/healthz")


def test_serve_refuses_to_listen_beyond_loopback_without_tls(tmp_path: Path) -> None:
    proc = subprocess.run(
        [ORCH, "--state-dir", str(tmp_path / "state"), "--libvirt-uri", "test:///default",
         "serve", "--listen", f"0.0.0.0:{free_port()}"],
        check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "loopback" in proc.stderr, proc.stderr
    assert not (tmp_path / "state" / "api-token").exists()
