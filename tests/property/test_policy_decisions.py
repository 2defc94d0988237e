"""Property tests of the pure policy decisions the use cases act on (``engine.policy``):
which instances an upgrade touches, protection refusals, the scale-in order, the rollout of
each mode and what a breach does, against statements of docs/semantics.md written here
independently of the code."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.engine import policy
from orchestrator.model import RollingUpgradePolicy, validate


@dataclass(frozen=True)
class Inst:
    instance_id: int
    model_generation: int
    protect_from_scale_in: bool
    protect_from_scale_set_actions: bool
    created_at: str


@st.composite
def instance_sets(draw: st.DrawFn) -> list[Inst]:
    ids = draw(st.lists(st.integers(0, 200), unique=True, max_size=25))
    return [Inst(i, draw(st.integers(1, 3)), draw(st.booleans()), draw(st.booleans()),
                 f"2026-01-01T00:00:{draw(st.integers(0, 59)):02d}Z") for i in ids]


@given(instance_sets(), st.integers(1, 3))
def test_an_upgrade_touches_exactly_the_unprotected_instances_behind(
        instances: list[Inst], generation: int) -> None:
    chosen = policy.eligible(instances, generation)
    for inst in instances:
        behind = inst.model_generation != generation
        assert (inst.instance_id in chosen) == (behind and not inst.protect_from_scale_set_actions)


@given(instance_sets(), st.sampled_from(["start", "stop", "restart", "deallocate",
                                         "reimage", "delete", "update-instances"]))
def test_protection_refuses_every_action_but_start_and_names_the_instances(
        instances: list[Inst], action: str) -> None:
    refusal = policy.refuse_protected(instances, action)
    protected = [i.instance_id for i in instances if i.protect_from_scale_set_actions]
    if action == "start" or not protected:
        assert refusal is None
    else:
        assert refusal is not None
        assert refusal.startswith("instances ") and refusal.endswith(
            "are protected from scale set actions")
        named = refusal.removeprefix("instances ").split(" are ")[0].split(", ")
        assert sorted(map(int, named)) == sorted(protected)


@given(instance_sets(), st.integers(0, 30), st.sampled_from(["Default", "NewestVM", "OldestVM"]))
def test_scale_in_removes_only_unprotected_instances_in_the_stated_order(
        instances: list[Inst], count: int, scale_in_policy: str) -> None:
    verdict = policy.scale_in_victims(instances, count, scale_in_policy=scale_in_policy)
    free = [i for i in instances
            if not i.protect_from_scale_in and not i.protect_from_scale_set_actions]
    if count > len(free):
        assert isinstance(verdict, str) and f"only {len(free)} are not protected" in verdict
        return
    assert isinstance(verdict, list) and len(verdict) == count
    by_id = {i.instance_id: i for i in instances}
    assert all(v in {i.instance_id for i in free} for v in verdict)
    kept = [i for i in free if i.instance_id not in verdict]
    for victim in (by_id[v] for v in verdict):
        for other in kept:
            if scale_in_policy == "OldestVM":  # no kept instance is older than a victim
                assert (victim.created_at, victim.instance_id) < (other.created_at,
                                                                   other.instance_id)
            else:  # highest instanceIds go first
                assert victim.instance_id > other.instance_id


def test_each_mode_has_its_rollout() -> None:
    assert [policy.rollout_of(m) for m in ("Automatic", "Rolling", "Manual")] == [
        "all-at-once", "rolling", "none"]


@given(st.booleans(), st.booleans(), st.lists(st.integers(0, 50), max_size=5))
def test_a_breach_rolls_back_only_failed_in_place_instances_when_asked(
        rollback: bool, surge: bool, failed: list[int]) -> None:
    rolling = validate(RollingUpgradePolicy, {"rollbackFailedInstancesOnPolicyBreach": rollback,
                                              "maxSurge": surge})
    verdict = policy.on_breach(rolling, surge=surge, failed=failed)
    assert verdict == ("rollback" if rollback and not surge and failed else "stop")


@st.composite
def fleets(draw: st.DrawFn) -> list[policy.HostRoom]:
    count = draw(st.integers(1, 6))
    return [policy.HostRoom(
        name=f"h{k}", fault_domain=f"fd-{draw(st.integers(1, 3))}", ready=draw(st.booleans()),
        memory_bytes=draw(st.one_of(st.none(), st.integers(0, 8))) ,
        pool_bytes=draw(st.integers(0, 8)), addresses=draw(st.integers(0, 8)),
        instances=draw(st.integers(0, 4))) for k in range(count)]


@given(fleets(), st.integers(0, 12), st.lists(st.sampled_from(["fd-1", "fd-2", "fd-3"]),
                                              unique=True, max_size=2))
def test_placement_respects_state_fault_domains_and_room(
        hosts: list[policy.HostRoom], count: int, allowed: list[str]) -> None:
    verdict = policy.place(hosts, count, memory_bytes=1, disk_bytes=1, fault_domains=allowed)
    by_name = {h.name: h for h in hosts}
    if isinstance(verdict, str):
        assert verdict.startswith("no host has room for instance")
        return
    assert len(verdict) == count
    for name, n in Counter(verdict).items():
        h = by_name[name]
        assert h.ready and (not allowed or h.fault_domain in allowed)
        assert n <= h.pool_bytes and n <= h.addresses
        assert h.memory_bytes is None or n <= h.memory_bytes


@given(st.integers(1, 5), st.integers(0, 40))
def test_placement_on_roomy_hosts_keeps_fault_domains_within_one(fds: int, count: int) -> None:
    hosts = [policy.HostRoom(f"h{k}", f"fd-{k % fds}", True, None, 10**6, 10**6)
             for k in range(fds * 2)]
    verdict = policy.place(hosts, count, memory_bytes=1, disk_bytes=1)
    assert isinstance(verdict, list)
    fd_of = {h.name: h.fault_domain for h in hosts}
    per_fd = Counter(fd_of[n] for n in verdict)
    counts = [per_fd.get(f"fd-{k}", 0) for k in range(fds)]
    assert max(counts) - min(counts) <= 1
    per_host = Counter(verdict)
    for fd in range(fds):  # inside a fault domain, its hosts within one of each other too
        here = [per_host.get(h.name, 0) for h in hosts if h.fault_domain == f"fd-{fd}"]
        assert max(here) - min(here) <= 1


@given(st.lists(st.tuples(st.integers(1, 2), st.sampled_from(["a", "b", "c"]), st.booleans()),
                min_size=1, max_size=20),
       st.integers(5, 100), st.booleans(), st.booleans())
def test_a_batch_holds_one_fault_domain_unless_cross_zone(
        rows: list[tuple[int, str, bool]], percent: int, cross: bool, prioritize: bool) -> None:
    members = [policy.Member(i, gen, healthy, False, fd)
               for i, (gen, fd, healthy) in enumerate(rows)]
    rolling = validate(RollingUpgradePolicy, {
        "maxBatchInstancePercent": percent, "maxUnhealthyInstancePercent": 100,
        "enableCrossZoneUpgrade": cross, "prioritizeUnhealthyInstances": prioritize})
    verdict = policy.next_batch(members, target=2, policy=rolling, capacity=len(members))
    pending = [m for m in members if m.generation != 2]
    if not pending:
        assert verdict.kind == "completed"
        return
    assert verdict.kind == "batch" and verdict.batch
    fds = {members[i].fault_domain for i in verdict.batch}
    assert cross or len(fds) == 1
    assert len(verdict.batch) <= max(1, percent * len(members) // 100)


# --- automatic repairs ------------------------------------------------------------------------
@given(st.lists(st.tuples(st.floats(0, 3600), st.booleans()), max_size=60),
       st.integers(0, 1000), st.floats(30, 1200))
def test_repairs_take_the_longest_ailing_unprotected_ones_up_to_five_percent(
        raw: list[tuple[float, bool]], capacity: int, grace: float) -> None:
    ailing = [policy.Ailing(n, seconds, protected) for n, (seconds, protected) in enumerate(raw)]
    due = policy.repairs_due(ailing, capacity=capacity, grace_seconds=grace)
    cap = max(1, int(capacity * 0.05))  # 5 %, rounded down, at least one
    eligible = [a for a in ailing if not a.protected and a.unhealthy_seconds > grace]
    assert len(due) == min(cap, len(eligible))
    by_id = {a.instance_id: a for a in ailing}
    assert all(not by_id[i].protected and by_id[i].unhealthy_seconds > grace for i in due)
    # nobody left out has been ailing longer than someone chosen
    left = [a.unhealthy_seconds for a in eligible if a.instance_id not in due]
    assert not left or not due or max(left) <= min(by_id[i].unhealthy_seconds for i in due)


@given(st.integers(0, 5), st.integers(0, 4), st.integers(0, 4))
def test_three_failed_repairs_in_a_row_suspend(before: int, ok: int, failed: int) -> None:
    count, suspended = policy.after_repairs(before, succeeded=ok, failed=failed)
    assert count == (failed if ok else before + failed)
    assert suspended == (count >= 3)


@given(st.booleans(), st.booleans(), st.booleans(), st.booleans())
def test_repairs_are_blocked_by_any_of_off_suspended_upgrading_scaling(
        enabled: bool, suspended: bool, upgrading: bool, scaling: bool) -> None:
    blocked = policy.repairs_blocked(enabled=enabled, suspended=suspended,
                                     upgrading=upgrading, scaling=scaling)
    assert (blocked is None) == (enabled and not suspended and not upgrading and not scaling)
