"""Benchmark: how close a real rolling upgrade comes to its critical path.

Not a test: it boots real VMs in the lab, rolls them from tiny:1 to tiny:2 with the real
``orch`` CLI, and prints figures. Run it inside the lab namespace:

    .venv/bin/orch lab exec -- .venv/bin/python bench/rolling.py --instances 4
    .venv/bin/orch lab exec -- .venv/bin/python bench/rolling.py --instances 6 --hosts 3

It works in its own temporary state dir (images built there) with its own set name, and
removes both even when something fails or it is interrupted. With ``--hosts N`` (N > 1) the
set spreads over the lab's simulated hosts lab-1..N, as tests/vm/test_hosts.py does it:
``orch lab up --hosts N`` on the lab's own state dir if the lab has fewer hosts, then ``orch
host add`` of each in the bench's state dir; at the end the hosts are removed from it and the
lab is given back the hosts it had. The method (what is timed, from which lines) is
described in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from orchestrator.errors import EnvironmentProblem
from orchestrator.labconfig import HOSTS_MAX  # the most simulated hosts the lab has
from orchestrator.labhosts import wanted_count
from orchestrator.model import MAX_CAPACITY  # the most instances a scale set may have

ORCH = str(Path(sys.executable).with_name("orch"))
PROGRESS = re.compile(r"^\[\s*(?P<t>[0-9.]+)s\] (?P<msg>.*)$")
BATCH = re.compile(r"^(?P<set>[a-z0-9-]+): batch (?P<n>\d+): instances (?P<ids>[0-9, ]+) \((?P<how>[a-z ]+)\)$")
TARGET_RATIO = 1.10
# The lab's own state dir, where its daemons and hosts are tracked (`orch lab exec` sets it).
LAB_STATE_DIR = Path(os.environ.get("ORCH_STATE_DIR", "/var/lib/orchestrator"))


class BenchError(Exception):
    """The benchmark could not run or could not read its own measurements."""


@dataclass
class InstanceTiming:
    name: str
    start: float  # "applying generation" (in place: shutdown begins) or "creating" (surge)
    healthy: float | None = None

    @property
    def seconds(self) -> float:
        if self.healthy is None:
            raise BenchError(f"{self.name} never reported Healthy")
        return self.healthy - self.start


@dataclass
class Batch:
    number: int
    started: float
    instances: dict[str, InstanceTiming] = field(default_factory=dict)
    # surge only: first "deleting" of an old instance -> the next batch (or the end) began
    deleting_from: float | None = None
    deleting_until: float | None = None

    @property
    def deletion(self) -> float:
        if self.deleting_from is None or self.deleting_until is None:
            return 0.0
        return self.deleting_until - self.deleting_from

    def slowest(self) -> InstanceTiming:
        return max(self.instances.values(), key=lambda t: t.seconds)


@dataclass
class Run:
    """What one ``vmss update`` printed, turned into timings."""

    batches: list[Batch]
    began: float  # "model generation" line: the upgrade was recorded
    ended: float  # "rolling upgrade Completed" line
    pauses: float  # total configured pause between batches

    @property
    def wall(self) -> float:
        return self.ended - self.began

    @property
    def critical_path(self) -> float:
        return sum(b.slowest().seconds for b in self.batches) + self.pauses

    @property
    def deletions(self) -> float:
        return sum(b.deletion for b in self.batches)


def parse_progress(stderr: str, *, set_name: str, pause_seconds: float) -> Run:
    """Timings from the ``[  12.3s] message`` progress lines of ``orch vmss update``."""
    batches: list[Batch] = []
    began = ended = None
    for line in stderr.splitlines():
        m = PROGRESS.match(line)
        if not m:
            continue
        t, msg = float(m["t"]), m["msg"]
        if msg.startswith(f"{set_name}: model generation"):
            began = t
        elif (b := BATCH.match(msg)) and b["set"] == set_name:
            _close_deletion(batches, t)
            batches.append(Batch(int(b["n"]), t))
        elif msg.startswith(f"{set_name}: rolling upgrade "):
            if not msg.startswith(f"{set_name}: rolling upgrade Completed"):
                raise BenchError(f"the upgrade did not complete: {msg}")
            _close_deletion(batches, t)
            ended = t
        elif batches and msg.endswith(": deleting") and batches[-1].deleting_from is None:
            batches[-1].deleting_from = t
        elif batches and (msg.endswith(")") and (": applying generation " in msg
                                                 or ": creating (" in msg)):
            name = msg.split(":", 1)[0]
            batches[-1].instances[name] = InstanceTiming(name, t)
        elif batches and ": Healthy after " in msg:
            name = msg.split(":", 1)[0]
            if name in batches[-1].instances:
                batches[-1].instances[name].healthy = t
    if began is None or ended is None or not batches:
        raise BenchError("the progress lines lack the start, the end or the batches")
    for batch in batches:
        if not batch.instances:
            raise BenchError(f"batch {batch.number} shows no instance being upgraded")
    return Run(batches, began, ended, pause_seconds * (len(batches) - 1))


def _close_deletion(batches: list[Batch], now: float) -> None:
    if batches and batches[-1].deleting_from is not None and batches[-1].deleting_until is None:
        batches[-1].deleting_until = now


@dataclass(frozen=True)
class Host:
    """Where instances of the set may live: a libvirt URI, the pool and network used there."""

    name: str
    uri: str
    pool: str
    network: str


def implicit_host() -> Host:
    """The lab's own libvirtd, the single host (nothing registered)."""
    return Host("local", os.environ.get("ORCH_LIBVIRT_URI", "qemu:///system"), "orchlab",
                "orchlab")


@dataclass
class Bench:
    state_dir: Path
    set_name: str
    hosts: list[Host] = field(default_factory=list)  # registered in state_dir by the bench
    # how many simulated hosts the lab had before the bench's `lab up --hosts N`; None: the
    # bench did not change the lab
    lab_hosts_before: int | None = None

    def orch(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([ORCH, "--state-dir", str(self.state_dir), *args],
                              capture_output=True, text=True, timeout=1800, check=False)
        if check and proc.returncode != 0:
            raise BenchError(f"orch {' '.join(args)} exited {proc.returncode}: "
                             f"{proc.stderr.strip()[-2000:]}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.orch(*args, "-o", "json").stdout)

    def leftovers(self) -> list[str]:
        """Domains, volumes and DHCP hosts of this set libvirt still has on any of its hosts
        (none after delete)."""
        prefix = f"{self.set_name}-"
        found = []
        for host in self.hosts or [implicit_host()]:
            domains = _virsh(host.uri, "list", "--all", "--name").split()
            volumes = [line.split()[0] for line in _virsh(host.uri, "vol-list", host.pool).splitlines()
                       if line.split()]
            dhcp = [line.strip() for line in _virsh(host.uri, "net-dumpxml", host.network).splitlines()
                    if "<host " in line and f"name='{prefix}" in line]
            found += [f"{host.name}: {n}" for n in domains + volumes if n.startswith(prefix)]
            found += [f"{host.name}: {line}" for line in dhcp]
        return found


def _virsh(uri: str, *args: str) -> str:
    return subprocess.run(["virsh", "-q", "-c", uri, *args], capture_output=True, text=True,
                          timeout=60, check=False).stdout


def lab(*args: str) -> Any:
    """``orch lab ARGS -o json`` on the lab's own state dir."""
    proc = subprocess.run([ORCH, "--state-dir", str(LAB_STATE_DIR), "lab", *args, "-o", "json"],
                          capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise BenchError(f"orch lab {' '.join(args)} exited {proc.returncode}: "
                         f"{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)


def use_lab_hosts(bench: Bench, count: int) -> None:
    """Hosts lab-1..``count`` registered in the bench's state dir, the lab brought up to that
    many first if it has fewer (a lab with more keeps them all: they may be someone's)."""
    try:
        before = wanted_count(LAB_STATE_DIR)
    except EnvironmentProblem as exc:
        raise BenchError(str(exc)) from exc
    if before < count:
        bench.lab_hosts_before = before  # first: an interrupted `lab up` is undone as well
        print(f"lab: {before} simulated hosts, bringing up {count}", flush=True)
        lab("up", "--hosts", str(count))
    found = {h["name"]: h for h in lab("hosts")}
    for k in range(1, count + 1):
        h = found.get(f"lab-{k}")
        if h is None or not h["up"]:
            raise BenchError(f"lab host lab-{k} is not up: "
                             f"{'; '.join(h['problems']) if h else 'not there'}")
        # recorded before it is added: removing a host that was not added is harmless
        bench.hosts.append(Host(h["name"], h["uri"], h["pool"], h["network"]))
        bench.orch("host", "add", "--name", h["name"], "--uri", h["uri"], "--fault-domain",
                   h["faultDomain"], "--network", h["network"], "--pool", h["pool"])


def clean_up(bench: Bench) -> int:
    """Delete the set, check that no host holds anything of it, remove the hosts the bench
    registered and give the lab back the hosts it had; 1 if something is left, else 0."""
    code = 0

    def warn(line: str) -> None:
        nonlocal code
        print(f"warning: {line}", file=sys.stderr)
        code = 1

    try:
        deleted = bench.orch("vmss", "delete", "--name", bench.set_name, check=False)
        left = bench.leftovers()
        if left:
            warn(f"libvirt still has {', '.join(left)} (delete said: {deleted.stderr.strip()})")
    except subprocess.TimeoutExpired as exc:
        warn(f"deleting the set: {exc}")
    for host in bench.hosts:
        try:
            bench.orch("host", "remove", "--name", host.name)
        except (BenchError, subprocess.TimeoutExpired) as exc:
            warn(f"host {host.name} stays registered in {bench.state_dir}: {exc}")
    if bench.lab_hosts_before is not None:
        try:
            lab("up", "--hosts", str(bench.lab_hosts_before))
        except (BenchError, subprocess.TimeoutExpired) as exc:
            warn(f"the lab keeps the bench's hosts; `orch lab up --hosts "
                 f"{bench.lab_hosts_before}` gives it back its own: {exc}")
    return code


def pause_iso(seconds: int) -> str:
    return f"PT{seconds}S"


def run_bench(bench: Bench, args: argparse.Namespace) -> Run:
    if args.hosts > 1:
        use_lab_hosts(bench, args.hosts)
    for version in ("1", "2"):
        bench.orch("image", "build", "tiny", "--version", version)
    percent = str(args.batch_percent)
    t0 = time.monotonic()
    bench.orch("vmss", "create", "--name", bench.set_name, "--image", "tiny:1",
               "--instance-count", str(args.instances), "--upgrade-policy-mode", "Rolling",
               "--max-batch-instance-percent", percent,
               # thresholds as wide as a batch, so the policy never stops this measurement
               "--max-unhealthy-instance-percent", percent,
               "--max-surge", "true" if args.surge else "false",
               "--pause-time-between-batches", pause_iso(args.pause_seconds))
    print(f"create of {args.instances} (all Healthy): {time.monotonic() - t0:.1f}s", flush=True)
    if bench.hosts:
        per_host = Counter(i["host"] for i in bench.json("vmss", "list-instances", "--name",
                                                         bench.set_name))
        print("instances per host: " + ", ".join(f"{h.name}={per_host.get(h.name, 0)}"
                                                  for h in bench.hosts), flush=True)

    t0 = time.monotonic()
    proc = bench.orch("vmss", "update", "--name", bench.set_name, "--image", "tiny:2")
    command_wall = time.monotonic() - t0
    if args.verbose:
        sys.stderr.write(proc.stderr)
    run = parse_progress(proc.stderr, set_name=bench.set_name, pause_seconds=args.pause_seconds)

    status = bench.json("vmss", "rolling-upgrade", "get-latest", "--name", bench.set_name)
    if status["runningStatus"]["code"] != "Completed":
        raise BenchError(f"rolling upgrade ended {status['runningStatus']['code']}")
    if len(status["batches"]) != len(run.batches):
        raise BenchError(f"status shows {len(status['batches'])} batches, progress {len(run.batches)}")
    on_latest = [i for i in bench.json("vmss", "list-instances", "--name", bench.set_name)
                 if i["latestModelApplied"] and i["healthState"] == "Healthy"]
    if len(on_latest) != args.instances:
        raise BenchError(f"only {len(on_latest)} of {args.instances} instances are Healthy on the latest model")

    report(run, args=args, command_wall=command_wall)
    return run


def report(run: Run, *, args: argparse.Namespace, command_wall: float) -> None:
    mode = "surge" if args.surge else "in place"
    on = f" on {args.hosts} hosts" if args.hosts > 1 else ""
    print(f"rolling upgrade tiny:1 -> tiny:2, {args.instances} instances{on}, batch "
          f"{args.batch_percent}% ({mode}), pause {args.pause_seconds}s")
    for batch in run.batches:
        slowest = batch.slowest()
        times = ", ".join(f"{n.rsplit('-', 1)[1]}={t.seconds:.1f}s" for n, t in batch.instances.items())
        print(f"  batch {batch.number}: start {batch.started - run.began:6.1f}s  "
              f"per instance {times}  slowest {slowest.seconds:.1f}s"
              + (f"  old ones deleted in {batch.deletion:.1f}s" if batch.deletion else ""))
    ratio = run.wall / run.critical_path
    print(f"wall time of the upgrade:  {run.wall:7.1f}s  (the whole `vmss update` command: {command_wall:.1f}s)")
    print(f"critical path:             {run.critical_path:7.1f}s  "
          f"(sum of slowest per batch {run.critical_path - run.pauses:.1f}s + pauses {run.pauses:.1f}s)")
    print(f"ratio wall/critical path:  {ratio:7.3f}  (target <= {TARGET_RATIO:.2f}: "
          f"{'met' if ratio <= TARGET_RATIO else 'NOT met'})", flush=True)
    if run.deletions:
        # surge keeps total <= capacity + batch, so the old instances must be gone before the
        # next batch: their deletion is on the path too, measured up to the next batch line
        print(f"ratio counting the surge deletions ({run.deletions:.1f}s) as necessary: "
              f"{run.wall / (run.critical_path + run.deletions):.3f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--instances", type=int, default=4,
                        help=f"instances in the set (1..{MAX_CAPACITY}, a scale set's capacity) [4]")
    parser.add_argument("--batch-percent", type=int, default=20,
                        help="maxBatchInstancePercent (5..100) [20]")
    parser.add_argument("--surge", action="store_true", help="maxSurge: new instances first")
    parser.add_argument("--pause-seconds", type=int, default=0, help="pause between batches [0]")
    parser.add_argument("--hosts", type=int, default=1,
                        help=f"hosts (1..{HOSTS_MAX}): 1 is the lab's own libvirtd, more the "
                             "lab's simulated hosts lab-1..N, one fault domain each [1]")
    parser.add_argument("-v", "--verbose", action="store_true", help="echo the CLI's progress lines")
    args = parser.parse_args(argv)
    if not 1 <= args.instances <= MAX_CAPACITY:
        parser.error(f"--instances must be 1..{MAX_CAPACITY} (a scale set's capacity), "
                     f"not {args.instances}")
    if not 5 <= args.batch_percent <= 100:
        parser.error(f"--batch-percent must be 5..100, not {args.batch_percent}")
    if args.pause_seconds < 0:
        parser.error(f"--pause-seconds must be >= 0, not {args.pause_seconds}")
    if not 1 <= args.hosts <= HOSTS_MAX:
        parser.error(f"--hosts must be 1..{HOSTS_MAX}, not {args.hosts}")
    if os.environ.get("ORCH_IN_LAB") != "1":
        print("run inside the lab: .venv/bin/orch lab exec -- .venv/bin/python bench/rolling.py",
              file=sys.stderr)
        return 2

    # SIGTERM unwinds like Ctrl-C, so the finally below still removes the set and state dir
    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # not under /tmp: libvirt's qemu user must traverse to the images
    state_dir = Path(tempfile.mkdtemp(prefix="orch-bench-", dir="/var/tmp"))
    os.chmod(state_dir, 0o711)
    bench = Bench(state_dir, f"bench-{uuid.uuid4().hex[:6]}")
    code = 0
    try:
        run_bench(bench, args)
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        code = 130
    finally:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short; the commands it runs
        # inherit the ignored signals (Python keeps SIGINT ignored when it starts so).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        left = clean_up(bench)
        code = code or left
        shutil.rmtree(state_dir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
