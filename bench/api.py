"""Benchmark: what `orch serve` answers per second for the instance list, on fake hosts.

Not a test: it builds a fake world (the fakes the unit tests use, a store whose writes skip
fsync) with one set of N instances, serves the API's app on it with uvicorn on 127.0.0.1 (a
free port, a thread of its own: real HTTP over loopback), and times
`GET /v1/scaleSets/{name}/virtualMachines`, with `?refresh=false` (what is recorded: the
portal's polling) and without (a probe round first, as `vmss list-instances`), from 1 and
from 8 concurrent clients (httpx, a thread and a connection each, in a process of their
own). It prints requests per
second and the p50 and p99 latency of each, then where one request's time goes, measured
in-process without HTTP: opening a call's collaborators (the `Opener`: a store connection
of its own) and the use case with its rendering. Run it from the project directory:

    .venv/bin/python bench/api.py                     # 100 instances, 1 and 8 clients
    .venv/bin/python bench/api.py --instances 500 --clients 1 4 16 --requests 400
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import multiprocessing
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import uvicorn

from orchestrator.api.app import Backend, create_app
from orchestrator.api.operations import Opener, Operations
from orchestrator.cli import render
from orchestrator.clock import RealClock
from orchestrator.engine.simulate import FakeProber
from orchestrator.model import MAX_CAPACITY, ScaleSetSpec, validate
from orchestrator.usecases import sets, views
from orchestrator.usecases.session import Env, Progress
from tests.world import World, make_world

TOKEN = "bench-token"
SET = "web"
DEADLINE = 30.0  # seconds the server gets to start and to stop


def world_of(directory: Path, instances: int) -> World:
    world = make_world(directory)
    world.store._db.execute("PRAGMA synchronous=OFF")  # a throwaway world: no fsync per write
    world.hv.set_memory_available(2**50)
    world.hv.set_pool_capacity("default", 2**50)
    spec = validate(ScaleSetSpec, {"name": SET, "capacity": instances,
                                   "model": {"image": "tiny:1", "memoryMiB": 64}})
    asyncio.run(sets.create(world.env, spec))
    return world


def real_time(world: World, *, probe_seconds: float) -> Opener:
    """``world.opened`` on the real clock, with a fake prober answering after
    ``probe_seconds``: the fake clock's time moves only while every task of one event loop
    waits on it, and a server's concurrent requests are many loops (one per call) sleeping on
    it at once, which it does not support."""
    clock = RealClock()
    prober = FakeProber(world.hv, clock=clock, latency=probe_seconds)

    @contextlib.contextmanager
    def opened(progress: Progress) -> Iterator[Env]:
        with world.opened(progress) as env:
            yield dataclasses.replace(env, prober=prober,
                                      engine=dataclasses.replace(env.engine, clock=clock))

    return opened


class Served:
    """The API's app on ``opener``, served by uvicorn on a thread of its own."""

    def __init__(self, opener: Opener) -> None:
        backend = Backend(opener=opener, operations=Operations(opener), token=TOKEN)
        # a free port, held from now on (no race for it); IPPROTO_TCP said, as uvicorn's own
        # bind says it: asyncio sets TCP_NODELAY only on the connections of such a socket,
        # and without it every answer (headers, then body) waits 40 ms for a delayed ACK
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(
            create_app(backend), log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="uvicorn", daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + DEADLINE
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise SystemExit("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(DEADLINE)
        self.sock.close()


def measure(url: str, *, clients: int, requests: int, path: str) -> dict[str, float]:
    """``requests`` GETs of ``path`` shared by ``clients`` threads, each with a connection
    of its own, started together; every answer must be 200."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[str] = []
    start = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"},
                          timeout=60) as http:
            http.get(path)  # the connection and the first request are no part of it
            start.wait()
            for _ in range(requests // clients):
                began = time.perf_counter()
                answer = http.get(path)
                latencies[k].append(time.perf_counter() - began)
                if answer.status_code != 200:
                    failures.append(f"{answer.status_code} {answer.text[:200]}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    if failures:
        raise SystemExit(f"GET {path}: {len(failures)} failed, first: {failures[0]}")
    every = sorted(x for one in latencies for x in one)
    return {"requests": len(every), "rps": len(every) / wall,
            "p50": statistics.median(every) * 1000,
            "p99": every[min(len(every) - 1, int(len(every) * 0.99))] * 1000}


def in_process(opener: Opener, *, refresh: bool, rounds: int) -> dict[str, float]:
    """Milliseconds per call, without HTTP: the Opener alone, and the use case with its
    rendering on an Env opened once."""
    def timed(work: Callable[[], Any]) -> float:
        work()  # warm
        began = time.perf_counter()
        for _ in range(rounds):
            work()
        return (time.perf_counter() - began) / rounds * 1000

    def open_only() -> None:
        with opener(lambda line: None):
            pass

    with opener(lambda line: None) as env:
        async def listed() -> list[dict[str, Any]]:
            return [render.instance_json(v)
                    for v in await views.instance_views(env, SET, refresh=refresh)]

        use_case = timed(lambda: asyncio.run(listed()))
    return {"open": timed(open_only), "use_case": use_case}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100,
                        help=f"instances of the set (1..{MAX_CAPACITY}) [100]")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8],
                        help="concurrent clients, each measured (1..64) [1 8]")
    parser.add_argument("--requests", type=int, default=200,
                        help="requests per measurement, shared by its clients (>= 8) [200]")
    parser.add_argument("--probe-ms", type=float, default=0.0,
                        help="how long the fake health probe of an instance takes (>= 0) "
                             "[0: the API's own work only]")
    parser.add_argument("--same-process", action="store_true",
                        help="run the clients' threads in the server's process")
    args = parser.parse_args()
    if args.probe_ms < 0:
        parser.error("--probe-ms: less than 0")
    if not 1 <= args.instances <= MAX_CAPACITY:
        parser.error(f"--instances: {args.instances} is not 1..{MAX_CAPACITY}")
    for n in args.clients:
        if not 1 <= n <= 64:
            parser.error(f"--clients: {n} is not 1..64")
    if args.requests < max(8, *args.clients):
        parser.error("--requests: fewer than the clients (or 8)")

    with tempfile.TemporaryDirectory(prefix="orch-api-bench-") as tmp:
        world = world_of(Path(tmp), args.instances)
        opener = real_time(world, probe_seconds=args.probe_ms / 1000)
        base = f"/v1/scaleSets/{SET}/virtualMachines"
        print(f"GET {base} of a set of {args.instances} instances, uvicorn on loopback, "
              f"a probe taking {args.probe_ms:g} ms, the clients in "
              f"{'the server' if args.same_process else 'a process of their own'}")
        print(f"{'refresh':>7} {'clients':>7} {'requests':>8} {'req/s':>8} {'p50 ms':>8} "
              f"{'p99 ms':>8}")
        # the clients' threads in a process of their own (unless --same-process): in the
        # server's, they would take its interpreter lock from it, as no real client does
        pool = (None if args.same_process
                else multiprocessing.get_context("spawn").Pool(1))
        with Served(opener) as served:
            for refresh, path in ((False, f"{base}?refresh=false"), (True, base)):
                for clients in args.clients:
                    kwargs = {"clients": clients, "requests": args.requests, "path": path}
                    m = (measure(served.url, **kwargs) if pool is None
                         else pool.apply(measure, (served.url,), kwargs))
                    print(f"{str(refresh).lower():>7} {clients:>7} {m['requests']:>8.0f} "
                          f"{m['rps']:>8.1f} {m['p50']:>8.2f} {m['p99']:>8.2f}")
        if pool is not None:
            pool.close()
            pool.join()
        print("one call in-process, no HTTP (ms):")
        print(f"{'refresh':>7} {'opener':>8} {'use case':>9}")
        for refresh in (False, True):
            t = in_process(opener, refresh=refresh, rounds=50)
            print(f"{str(refresh).lower():>7} {t['open']:>8.2f} {t['use_case']:>9.2f}")
        world.store.close()


if __name__ == "__main__":
    main()
