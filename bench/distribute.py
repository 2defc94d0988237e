"""Benchmark: putting an image on several hosts, and what it costs the controller in memory.

Not a test: it copies a registered image to the lab's simulated hosts exactly as the first
instance on each host would (``engine.copies.ensure``: the adapter's streamed
``upload_file``, read back and hashed on arrival, then recorded), all hosts at once as a
create spread over them does, and prints figures. Run it inside the lab namespace once the
lab has its hosts:

    .venv/bin/orch lab up --hosts 3
    .venv/bin/orch lab exec -- .venv/bin/python bench/distribute.py --image debian-12:1

It works in its own temporary state dir: the image is built there (``--image NAME:VERSION``
of a recipe under images/, ``orch image build``) or imported (``--file disk.qcow2``), the
lab's hosts are registered there, and afterwards the copies are deleted from every host
(``orch image delete``) and the state dir removed, even when something fails.

Printed: the image's size (file and allocated), per host the seconds of its copy, the wall
time for all hosts, the throughput, and the controller process's resident memory before the
copies and at its peak during them (sampled every 10 ms from /proc/self/status, and
``ru_maxrss``). ``--again`` times a second ``ensure`` on a fresh engine (a later command: the
recorded copies are found and nothing is sent).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.cli.app import AppContext
from orchestrator.engine import copies
from orchestrator.engine.context import Where
from orchestrator.errors import OrchError
from orchestrator.usecases.session import Env

ORCH = str(Path(sys.executable).with_name("orch"))
LAB_STATE_DIR = Path(os.environ.get("ORCH_STATE_DIR", "/var/lib/orchestrator"))


class BenchError(Exception):
    """The benchmark could not run."""


def orch(state_dir: Path, *args: str) -> str:
    proc = subprocess.run([ORCH, "--state-dir", str(state_dir), *args], capture_output=True,
                          text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        raise BenchError(f"orch {' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class PeakRss:
    """The highest VmRSS seen while it runs, sampled every 10 ms."""

    def __init__(self) -> None:
        self.peak = rss_kib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_kib())

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib())


def app_for(state_dir: Path) -> AppContext:
    return AppContext(state_dir=state_dir, libvirt_uri="qemu:///system", domain_type="qemu",
                      output="json", wait=True, verbose=0)


async def copy_to_all(env: Env, ref: str) -> dict[str, float]:
    image = env.registry.get(ref)
    took: dict[str, float] = {}

    async def one(w: Where) -> None:
        started = time.perf_counter()
        await copies.ensure(env.engine, w, image)
        took[w.name] = time.perf_counter() - started

    await asyncio.gather(*(one(w) for w in env.engine.hosts() if w.name != "local"))
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="NAME:VERSION built from the recipe NAME (debian-12:1)")
    source.add_argument("--file", type=Path, help="a qcow2 or raw disk to import")
    parser.add_argument("--again", action="store_true", help="also time a second ensure")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    if os.environ.get("ORCH_IN_LAB") != "1":
        parser.error("run inside the lab: `orch lab exec -- .venv/bin/python bench/distribute.py`")

    lab_hosts = [h for h in json.loads(orch(LAB_STATE_DIR, "lab", "hosts", "-o", "json"))
                 if h.get("up")]
    if not lab_hosts:
        raise BenchError("the lab has no simulated hosts: `orch lab up --hosts 3` first")
    state_dir = Path(tempfile.mkdtemp(prefix="orch-distribute-", dir="/var/tmp"))
    os.chmod(state_dir, 0o711)
    ref = args.image or "bench:1"
    try:
        if args.image:
            recipe, version = args.image.split(":", 1)
            orch(state_dir, "image", "build", recipe, "--version", version)
        else:
            orch(state_dir, "image", "import", ref, "--file", str(args.file))
        for h in lab_hosts:
            orch(state_dir, "host", "add", "--name", h["name"], "--uri", h["uri"],
                 "--fault-domain", h["faultDomain"], "--network", h["network"],
                 "--pool", h["pool"])
        app = app_for(state_dir)
        env = app.env()
        disk = env.registry.get(ref).disk
        size, allocated = disk.stat().st_size, disk.stat().st_blocks * 512
        before = rss_kib()
        with PeakRss() as peak:
            started = time.perf_counter()
            took = app.run(copy_to_all(env, ref))
            wall = time.perf_counter() - started
        again = None
        if args.again:
            later = app_for(state_dir).env()
            started = time.perf_counter()
            app.run(copy_to_all(later, ref))
            again = time.perf_counter() - started
        figures = {
            "image": ref, "fileMiB": round(size / 2**20, 1),
            "allocatedMiB": round(allocated / 2**20, 1), "hosts": len(took),
            "secondsPerHost": {h: round(s, 2) for h, s in sorted(took.items())},
            "wallSeconds": round(wall, 2),
            "MiBPerSecond": round(len(took) * size / 2**20 / wall, 1),
            "rssMiBBefore": round(before / 1024, 1), "rssMiBPeak": round(peak.peak / 1024, 1),
            "maxrssMiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "againSeconds": None if again is None else round(again, 3),
        }
    finally:
        try:
            orch(state_dir, "image", "delete", ref)  # the copies leave every host with it
        except BenchError as exc:
            print(f"clean-up: {exc}", file=sys.stderr)
        for h in lab_hosts:
            subprocess.run([ORCH, "--state-dir", str(state_dir), "host", "remove", "--name",
                            h["name"]], capture_output=True, timeout=120, check=False)
        shutil.rmtree(state_dir, ignore_errors=True)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"{ref}: {figures['fileMiB']} MiB file ({figures['allocatedMiB']} MiB allocated) "
              f"to {figures['hosts']} hosts at once: {figures['wallSeconds']} s wall, "
              f"{figures['MiBPerSecond']} MiB/s in all")
        for host, seconds in sorted(took.items()):
            print(f"  {host}: {seconds:.2f} s")
        print(f"controller RSS: {figures['rssMiBBefore']} MiB before, {figures['rssMiBPeak']} "
              f"MiB peak during the copies (ru_maxrss {figures['maxrssMiB']} MiB)")
        if again is not None:
            print(f"a later command finds the copies: {figures['againSeconds']} s, nothing sent")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchError, OrchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
