"""Benchmark: how long a libvirt call takes to fail once a remote host stops answering.

Not a test: it needs a libvirtd listening on TCP and a way to blackhole it. Run it with the
project's python where the URI is reachable (e.g. inside the controller's namespace):

    .venv/bin/python bench/keepalive.py --uri qemu+tcp://10.250.0.1/system \\
        --blackhole 'ip netns exec h1 iptables -A INPUT -j DROP' \\
        --restore 'ip netns exec h1 iptables -D INPUT -j DROP'

Without ``--blackhole`` it makes a call every half second and waits for you to cut the host
off (``ip netns exec h1 iptables -A INPUT -j DROP`` in another shell); the first call that
does not answer within a second is the one timed.

Phases, each a call of the product's adapter (``LibvirtHypervisor.list_domains``, run in a
worker thread so a call that hangs can be given up on after ``--wait`` seconds):

1. baseline: open the connection and make one call (timed);
2. ``--idle S``: leave the connection idle (keepalive pings go back and forth);
3. blackhole (``--blackhole CMD`` or your hand), then the call on the open connection: the
   time until it raises is the figure (keepalive (2, 3): 8-12 s; ``--no-keepalive``: it
   hangs until ``--wait``);
4. the next call, which reopens the connection: for tcp and tls the adapter first tries the
   TCP handshake with its connect timeout;
5. with ``--restore CMD``: the command, then calls until one answers (recovery time).

``--retrying S`` puts the calls of phases 3 and 4 through ``hypervisor.retry.Retrying`` with
``give_up_after=S``, as ``orch`` does (60 s there): what a dead host costs a command.
Prints one line per phase, or a JSON document with ``--json``. Exit code 0 if phase 3 raised
``HypervisorUnavailable`` within ``--budget`` seconds (15), 1 if not, 2 for bad usage. The
``--restore`` command runs whatever happens (failure, Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass

from orchestrator.clock import RealClock
from orchestrator.errors import HypervisorUnavailable, OrchError
from orchestrator.hypervisor.base import Hypervisor
from orchestrator.hypervisor.libvirt import (
    CONNECT_TIMEOUT,
    KEEPALIVE,
    LibvirtHypervisor,
    remote_of,
)
from orchestrator.hypervisor.retry import Retrying


@dataclass
class Phase:
    name: str
    seconds: float
    outcome: str  # "ok" | "raised" | "hanging"
    error: str = ""  # the error's class and message
    unavailable: bool = False  # the error is a HypervisorUnavailable


class Call:
    """``hv.list_domains()`` running in a worker thread, started now."""

    def __init__(self, hv: Hypervisor, name: str) -> None:
        self.name = name
        self._error: OrchError | None = None
        self.started = time.monotonic()
        self._worker = threading.Thread(target=self._run, args=(hv,), name=f"bench-{name}",
                                        daemon=True)
        self._worker.start()

    def _run(self, hv: Hypervisor) -> None:
        try:
            hv.list_domains()
        except OrchError as exc:
            self._error = exc

    def join(self, wait: float) -> Phase:
        """The phase once the call ended, or "hanging" ``wait`` seconds after its start."""
        self._worker.join(max(0.0, self.started + wait - time.monotonic()))
        seconds = time.monotonic() - self.started
        if self._worker.is_alive():
            return Phase(self.name, seconds, "hanging", f"still waiting after {wait:g}s")
        if self._error is not None:
            return Phase(self.name, seconds, "raised",
                         f"{type(self._error).__name__}: {self._error.one_line()}",
                         isinstance(self._error, HypervisorUnavailable))
        return Phase(self.name, seconds, "ok")


def timed_call(hv: Hypervisor, name: str, *, wait: float) -> Phase:
    return Call(hv, name).join(wait)


def shell(command: str) -> None:
    subprocess.run(command, shell=True, check=True)


def wait_for_the_cut(hv: Hypervisor, *, wait: float) -> Phase:
    """A call every 0.5 s until one does not answer within a second; that one, timed from
    its start."""
    print("cut the host off now (e.g. ip netns exec HOST iptables -A INPUT -j DROP); "
          "polling ...", file=sys.stderr, flush=True)
    while True:
        call = Call(hv, "call after the cut")
        phase = call.join(1.0)
        if phase.outcome == "ok":
            time.sleep(0.5)
            continue
        return phase if phase.outcome == "raised" else call.join(wait)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--uri", required=True, help="a remote libvirt URI, qemu+tcp://HOST/system")
    parser.add_argument("--blackhole", metavar="CMD", help="shell command that cuts the host off")
    parser.add_argument("--restore", metavar="CMD", help="shell command that undoes it")
    parser.add_argument("--keepalive", nargs=2, type=int, metavar=("INTERVAL", "COUNT"),
                        default=list(KEEPALIVE), help=f"keepalive [{KEEPALIVE[0]} {KEEPALIVE[1]}]")
    parser.add_argument("--no-keepalive", action="store_true", help="no keepalive (to compare)")
    parser.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT,
                        help=f"TCP handshake timeout of a reconnect [{CONNECT_TIMEOUT:g}]")
    parser.add_argument("--idle", type=float, default=0.0, help="idle seconds before the cut [0]")
    parser.add_argument("--wait", type=float, default=60.0,
                        help="give a hanging call up after this many seconds [60]")
    parser.add_argument("--retrying", type=float, metavar="S",
                        help="phases 3 and 4 through Retrying(give_up_after=S)")
    parser.add_argument("--budget", type=float, default=15.0,
                        help="phase 3 must fail within this many seconds [15]")
    parser.add_argument("--json", action="store_true", help="print a JSON document")
    args = parser.parse_args(argv)
    if remote_of(args.uri) is None:
        parser.error(f"{args.uri} is a local URI: keepalive is for remote ones (qemu+tcp://...)")
    interval, count = args.keepalive
    if interval < 1 or count < 1:
        parser.error("--keepalive INTERVAL COUNT must both be >= 1")

    keepalive = None if args.no_keepalive else (interval, count)
    adapter = LibvirtHypervisor(args.uri, keepalive=keepalive,
                                connect_timeout=args.connect_timeout)
    hv: Hypervisor = adapter
    phases: list[Phase] = []
    restored = False
    try:
        phases.append(timed_call(adapter, "baseline", wait=args.wait))
        if phases[-1].outcome != "ok":
            print(f"the host does not answer before the cut: {phases[-1].error}", file=sys.stderr)
            return 1
        if args.retrying is not None:
            hv = Retrying(adapter, clock=RealClock(), give_up_after=args.retrying)
            hv.list_domains()  # reached once, as in a command that has been working
        if args.idle > 0:
            time.sleep(args.idle)
        if args.blackhole:
            shell(args.blackhole)
            phases.append(timed_call(hv, "call after the cut", wait=args.wait))
        else:
            phases.append(wait_for_the_cut(hv, wait=args.wait))
        phases.append(timed_call(hv, "next call (reconnect)", wait=args.wait))
        if args.restore:
            shell(args.restore)
            restored = True
            start = time.monotonic()
            while True:
                phase = timed_call(adapter, "recovery", wait=args.wait)
                if phase.outcome == "ok" or time.monotonic() - start > args.wait:
                    phase.seconds = time.monotonic() - start
                    phases.append(phase)
                    break
                time.sleep(0.5)
    finally:
        if args.restore and not restored:
            shell(args.restore)

    cut = phases[1]
    met = cut.unavailable and cut.seconds <= args.budget
    settings = {"uri": args.uri, "keepalive": keepalive, "connect_timeout": args.connect_timeout,
                "idle": args.idle, "retrying": args.retrying, "budget": args.budget}
    if args.json:
        print(json.dumps({"settings": settings, "phases": [asdict(p) for p in phases],
                          "met": met}, indent=2))
    else:
        print(f"settings: {settings}")
        for p in phases:
            print(f"{p.name:24} {p.seconds:7.2f}s  {p.outcome:8} {p.error}")
        print(f"call after the cut failed within {args.budget:g}s: {'yes' if met else 'NO'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
