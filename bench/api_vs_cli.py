"""Benchmark: the latency `orch serve` adds to `manualupgrade` of one real instance, compared
with the CLI's `orch vmss update-instances`.

Not a test: it boots a real VM in the lab and prints figures. Run it inside the lab:

    .venv/bin/orch lab exec -- .venv/bin/python bench/api_vs_cli.py --rounds 3

It works in its own temporary state dir (tiny:1 and tiny:2 built there) with a Manual set of
one instance, and starts `orch serve --no-controller` on a free loopback port in that state
dir. Each round flips the model's image (tiny:1 <-> tiny:2, `vmss update`, which records a
generation and rolls nothing on a Manual set) and brings instance 0 to it, alternately with
the CLI (`update-instances`, the wall time of the process) and with the Python client
(`manual_upgrade(wait=True)`: the 202, then polling the operation until it ends). Both do the
same work (shut down, new OS disk, boot, wait for Healthy), so the difference of the medians
is what the API adds (HTTP, the operation's thread, polling) against what the CLI pays
(starting Python and importing orch). Everything is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.client import POLL_MAX, Client
from orchestrator.errors import EnvironmentProblem

ORCH = str(Path(sys.executable).with_name("orch"))
SET = "benchapi"


def orch(state: Path, *args: str, timeout: float = 600) -> str:
    proc = subprocess.run([ORCH, "--state-dir", str(state), *args], capture_output=True,
                          text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"orch {' '.join(args)} failed ({proc.returncode}): "
                         f"{proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="upgrades per way [3]")
    args = parser.parse_args()
    if os.environ.get("ORCH_IN_LAB") != "1":
        raise SystemExit("run it inside the lab: orch lab exec -- .venv/bin/python "
                         "bench/api_vs_cli.py")
    state = Path(tempfile.mkdtemp(prefix="orch-bench-api-", dir="/var/tmp"))
    os.chmod(state, 0o711)
    server: subprocess.Popen[str] | None = None
    try:
        for version in ("1", "2"):
            orch(state, "image", "build", "tiny", "--version", version, "-o", "json")
        orch(state, "vmss", "create", "--name", SET, "--image", "tiny:1", "--instance-count",
             "1", "--upgrade-policy-mode", "Manual", "-o", "json")
        port = free_port()
        server = subprocess.Popen([ORCH, "--state-dir", str(state), "serve", "--listen",
                                   f"127.0.0.1:{port}", "--no-controller"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  text=True)
        token_file = state / "api-token"
        deadline = time.monotonic() + 60
        while not token_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        api = Client(f"http://127.0.0.1:{port}", token_file.read_text().strip(), timeout=30)
        while True:
            try:
                api.healthz()
                break
            except EnvironmentProblem:  # not listening yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        times: dict[str, list[float]] = {"cli": [], "api": []}
        image = "tiny:1"
        for k in range(2 * args.rounds):
            image = "tiny:2" if image == "tiny:1" else "tiny:1"
            orch(state, "vmss", "update", "--name", SET, "--image", image, "-o", "json")
            way = "cli" if k % 2 == 0 else "api"
            started = time.monotonic()
            if way == "cli":
                orch(state, "vmss", "update-instances", "--name", SET, "--instance-ids", "0",
                     "-o", "json")
            else:
                api.manual_upgrade(SET, [0], wait=True, timeout=600)
            seconds = time.monotonic() - started
            times[way].append(seconds)
            print(f"round {k + 1}: {way} update-instances to {image}: {seconds:.2f} s",
                  flush=True)
        cli, via_api = statistics.median(times["cli"]), statistics.median(times["api"])
        print(f"median CLI (process wall) {cli:.2f} s, API (202 + polling) {via_api:.2f} s: "
              f"the API adds {via_api - cli:+.2f} s (client polls back off to {POLL_MAX} s)")
        api.close()
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        subprocess.run([ORCH, "--state-dir", str(state), "vmss", "delete", "--name", SET],
                       capture_output=True, timeout=300, check=False)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
