"""Benchmark: the controller's own work per instance, on fake hosts (no VMs).

Not a test: for each size it builds a fake world of 4 hosts in 4 fault domains (the fakes the
unit tests use, a fake clock, a store whose writes skip fsync), creates a Rolling set of N
instances on tiny:1, then times

- `vmss plan --image tiny:2` (the dry run: a store copy, a fake host per host, the real
  rolling upgrade simulated), and
- the rolling upgrade itself (`vmss update --image tiny:2`, 20 % batches) on the fakes,

and prints real seconds, seconds per instance, and hypervisor calls per instance (every call
the use cases made to the four fake hosts). Run it from the project directory:

    .venv/bin/python bench/scale.py                 # 10, 100, 1000
    .venv/bin/python bench/scale.py --sizes 50 500
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.dryrun.plan import make_plan
from orchestrator.model import MAX_CAPACITY, ScaleSetSpec, validate
from orchestrator.usecases import sets, updates
from tests.world import World, make_world

HOSTS = 4


def world_of(directory: Path) -> World:
    world = make_world(directory)
    world.store._db.execute("PRAGMA synchronous=OFF")  # a throwaway world: no fsync per write
    for k in range(1, HOSTS + 1):
        hv = world.add_host(f"h{k}", fault_domain=f"fd-{k}")
        hv.set_pool_capacity("default", 2**50)
    world.register_image("tiny", "2")
    return world


def calls(world: World) -> int:
    return sum(len(hv.calls) for hv in world.fakes.values())


def measure(size: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="orch-scale-") as tmp:
        world = world_of(Path(tmp))
        spec = validate(ScaleSetSpec, {
            "name": "web", "capacity": size, "model": {"image": "tiny:1", "memoryMiB": 64},
            "upgradePolicy": {"mode": "Rolling", "rollingUpgradePolicy": {
                "maxBatchInstancePercent": 20, "maxUnhealthyInstancePercent": 20}}})
        started = time.perf_counter()
        asyncio.run(sets.create(world.env, spec))
        create_s = time.perf_counter() - started

        before = calls(world)
        started = time.perf_counter()
        plan = asyncio.run(make_plan(world.env, "web", changes={"model": {"image": "tiny:2"}}))
        plan_s = time.perf_counter() - started
        plan_calls = calls(world) - before
        if plan["outcome"] != "Completed":
            raise SystemExit(f"plan of {size}: {plan['outcome']}: {plan['error']}")

        before = calls(world)
        started = time.perf_counter()
        asyncio.run(updates.update(world.env, "web", {"model": {"image": "tiny:2"}}))
        upgrade_s = time.perf_counter() - started
        upgrade_calls = calls(world) - before
        images = {i.image for i in world.store.list_instances("web")}
        if images != {"tiny:2"}:
            raise SystemExit(f"upgrade of {size} left {images}")
        world.store.close()
    return {"create": create_s, "plan": plan_s, "plan_calls": plan_calls / size,
            "batches": len(plan["batches"]), "upgrade": upgrade_s,
            "upgrade_calls": upgrade_calls / size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000],
                        help=f"set sizes (1..{MAX_CAPACITY}) [10 100 1000]")
    args = parser.parse_args()
    for size in args.sizes:
        if not 1 <= size <= MAX_CAPACITY:
            parser.error(f"--sizes: {size} is not 1..{MAX_CAPACITY}")
    print(f"{'instances':>9} {'batches':>7} {'plan s':>8} {'plan s/inst':>11} "
          f"{'plan calls/inst':>15} {'upgrade s':>9} {'upgrade s/inst':>14} "
          f"{'upgrade calls/inst':>18} {'create s':>8}")
    for size in args.sizes:
        m = measure(size)
        print(f"{size:>9} {m['batches']:>7.0f} {m['plan']:>8.2f} {m['plan'] / size:>11.4f} "
              f"{m['plan_calls']:>15.1f} {m['upgrade']:>9.2f} {m['upgrade'] / size:>14.4f} "
              f"{m['upgrade_calls']:>18.1f} {m['create']:>8.2f}")


if __name__ == "__main__":
    main()
