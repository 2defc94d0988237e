"""Every decision of the upgrade policy, as pure functions (docs/semantics.md).

Owned here: which instances a scale-set action may touch (``eligible``, ``refuse_protected``),
how a model change reaches instances per mode (``rollout_of``), which instances a scale-in
removes (``scale_in_victims``), percent arithmetic and its stated rounding, the order of
pending instances, batch selection, the two health thresholds, what a breach does
(``on_breach``), and which instances automatic repairs take on (``repairs_due``,
``repairs_blocked``, ``after_repairs``). It reads no clock and touches nothing, so property tests exercise it with
any inputs; the drivers in ``usecases`` act on its verdicts.

Called by: dryrun.plan, usecases.controller, usecases.placement, usecases.repairs,
usecases.rolling, usecases.sets, usecases.updates
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from orchestrator.model import RollingUpgradePolicy


class Candidate(Protocol):
    """What the policy reads of an instance (``store.InstanceRecord`` is one)."""

    @property
    def instance_id(self) -> int: ...
    @property
    def model_generation(self) -> int: ...
    @property
    def protect_from_scale_in(self) -> bool: ...
    @property
    def protect_from_scale_set_actions(self) -> bool: ...
    @property
    def created_at(self) -> str: ...


Rollout = Literal["all-at-once", "rolling", "none"]


def rollout_of(mode: str) -> Rollout:
    """How a model change reaches existing instances: Automatic upgrades every instance at
    once, Rolling in batches, Manual not at all (``update-instances`` does)."""
    return {"Automatic": "all-at-once", "Rolling": "rolling"}.get(mode, "none")  # type: ignore[return-value]


def eligible(instances: Sequence[Candidate], generation: int) -> list[int]:
    """The instances an upgrade to ``generation`` acts on: not on it already, not
    protected from scale-set actions."""
    return [i.instance_id for i in instances
            if i.model_generation != generation and not i.protect_from_scale_set_actions]


def refuse_protected(instances: Sequence[Candidate], action: str) -> str | None:
    """The refusal of ``action`` on instances protected from scale-set actions, or None.
    Starting a protected instance is allowed (it only brings it to what the user wants)."""
    if action == "start":
        return None
    protected = [str(i.instance_id) for i in instances if i.protect_from_scale_set_actions]
    if protected:
        return f"instances {', '.join(protected)} are protected from scale set actions"
    return None


def scale_in_victims(instances: Sequence[Candidate], count: int, *, scale_in_policy: str,
                     fault_domain_of: Mapping[int, str] | None = None) -> list[int] | str:
    """The ``count`` instances a scale-in removes (none protected from scale-in or from
    scale-set actions): one at a time from the fault domain holding the most of the set's
    instances (ties: the name), within it highest instanceIds first (Default, NewestVM) or
    oldest first (OldestVM). A refusal in words when too few may go."""
    fd_of = fault_domain_of or {}
    candidates = [i for i in instances
                  if not i.protect_from_scale_in and not i.protect_from_scale_set_actions]
    if len(candidates) < count:
        return (f"cannot remove {count} instances: only {len(candidates)} are not protected "
                "from scale-in")
    if scale_in_policy == "OldestVM":
        candidates.sort(key=lambda i: (i.created_at, i.instance_id))
    else:
        candidates.sort(key=lambda i: i.instance_id, reverse=True)
    held = Counter(fd_of.get(i.instance_id, "") for i in instances)
    victims: list[int] = []
    for _ in range(count):
        fullest = min({fd_of.get(i.instance_id, "") for i in candidates},
                      key=lambda fd: (-held[fd], fd))
        victim = next(i for i in candidates if fd_of.get(i.instance_id, "") == fullest)
        candidates.remove(victim)
        held[fullest] -= 1
        victims.append(victim.instance_id)
    return victims


@dataclass(frozen=True)
class HostRoom:
    """What placement knows of one host: its fault domain, whether it takes new instances
    (Ready and reachable), its room, and how many of the set's instances it holds."""

    name: str
    fault_domain: str
    ready: bool
    memory_bytes: int | None  # None: not known, not limiting
    pool_bytes: int
    addresses: int
    instances: int = 0


def place(hosts: Sequence[HostRoom], count: int, *, memory_bytes: int, disk_bytes: int,
          fault_domains: Sequence[str] = ()) -> list[str] | str:
    """The hosts ``count`` new instances go to, one by one: to the allowed fault domain
    holding the fewest of the set's instances, inside it to the host holding the fewest
    (ties: the most free memory, then the name), among Ready hosts with room for one more.
    A refusal in words when some instance has nowhere to go."""
    rooms = {h.name: h for h in hosts}
    chosen: list[str] = []
    for k in range(count):
        fits = [h for h in rooms.values()
                if h.ready and (not fault_domains or h.fault_domain in fault_domains)
                and (h.memory_bytes is None or h.memory_bytes >= memory_bytes)
                and h.pool_bytes >= disk_bytes and h.addresses >= 1]
        if not fits:
            return _no_room(list(rooms.values()), k, count, memory_bytes=memory_bytes,
                            disk_bytes=disk_bytes, fault_domains=fault_domains)
        per_fd = Counter[str]()
        for h in rooms.values():
            per_fd[h.fault_domain] += h.instances
        best = min(fits, key=lambda h: (per_fd[h.fault_domain], h.fault_domain, h.instances,
                                        -(h.memory_bytes or 0), h.name))
        rooms[best.name] = HostRoom(
            best.name, best.fault_domain, best.ready,
            None if best.memory_bytes is None else best.memory_bytes - memory_bytes,
            best.pool_bytes - disk_bytes, best.addresses - 1, best.instances + 1)
        chosen.append(best.name)
    return chosen


def _no_room(hosts: list[HostRoom], k: int, count: int, *, memory_bytes: int, disk_bytes: int,
             fault_domains: Sequence[str]) -> str:
    why = []
    for h in hosts:
        if fault_domains and h.fault_domain not in fault_domains:
            why.append(f"{h.name}: fault domain {h.fault_domain} not allowed")
        elif not h.ready:
            why.append(f"{h.name}: not Ready")
        elif h.memory_bytes is not None and h.memory_bytes < memory_bytes:
            why.append(f"{h.name}: {h.memory_bytes // 2**20} MiB of memory free, "
                       f"{memory_bytes // 2**20} needed")
        elif h.pool_bytes < disk_bytes:
            why.append(f"{h.name}: {h.pool_bytes // 2**20} MiB free in its pool, "
                       f"{disk_bytes // 2**20} needed")
        else:
            why.append(f"{h.name}: no free address")
    return (f"no host has room for instance {k + 1} of {count}: " + "; ".join(why)
            if why else "no host is registered")


Breach = Literal["rollback", "stop"]


def on_breach(policy: RollingUpgradePolicy, *, surge: bool, failed: Sequence[int]) -> Breach:
    """What a Faulted rolling upgrade does to the instances that failed: in place, with
    ``rollbackFailedInstancesOnPolicyBreach``, they return to the previous model; a failed
    surge replacement is already gone (its old instance stayed), so there is nothing to
    roll back."""
    if policy.rollback_failed_instances_on_policy_breach and failed and not surge:
        return "rollback"
    return "stop"


@dataclass(frozen=True)
class Member:
    """What the policy needs to know of one instance."""

    instance_id: int
    generation: int
    healthy: bool
    protected: bool = False  # protectFromScaleSetActions: upgrades pass it by
    fault_domain: str = ""


@dataclass(frozen=True)
class Verdict:
    kind: Literal["batch", "completed", "faulted"]
    batch: tuple[int, ...] = ()
    reason: str | None = None


def percent_of(percent: int, count: int) -> int:
    """``percent`` of ``count``, rounded down (integers only, as the status says)."""
    return percent * count // 100


def batch_size(policy: RollingUpgradePolicy, capacity: int) -> int:
    return max(1, percent_of(policy.max_batch_instance_percent, capacity))


def thresholds(policy: RollingUpgradePolicy, capacity: int) -> list[str]:
    """The rounding of every percent threshold, in words, for the status."""
    batch = batch_size(policy, capacity)
    unhealthy = percent_of(policy.max_unhealthy_instance_percent, capacity)
    return [
        (f"maxBatchInstancePercent {policy.max_batch_instance_percent}% of {capacity} "
         f"instances = {batch} per batch (rounded down, at least 1)"),
        (f"maxUnhealthyInstancePercent {policy.max_unhealthy_instance_percent}% of {capacity} "
         f"instances = {unhealthy} unhealthy allowed (rounded down)"),
        (f"maxUnhealthyUpgradedInstancePercent {policy.max_unhealthy_upgraded_instance_percent}%"
         " of the upgraded instances, rounded down, unhealthy allowed after each batch"),
    ]


def pending(members: Sequence[Member], target: int,
            skip: frozenset[int] = frozenset()) -> list[Member]:
    """Instances not on ``target`` that a policy may touch; ``skip``: instances this upgrade
    already tried (a failed MaxSurge replacement leaves its old instance behind, and it is
    not tried again within the same upgrade)."""
    return [m for m in members
            if m.generation != target and not m.protected and m.instance_id not in skip]


def ordered(todo: Sequence[Member], *, prioritize_unhealthy: bool) -> list[Member]:
    if prioritize_unhealthy:
        return sorted(todo, key=lambda m: (m.healthy, m.instance_id))
    return sorted(todo, key=lambda m: m.instance_id)


def next_batch(members: Sequence[Member], *, target: int, policy: RollingUpgradePolicy,
               capacity: int, skip: frozenset[int] = frozenset()) -> Verdict:
    """The next batch of a rolling upgrade toward generation ``target``, or its end.

    ``maxUnhealthyInstancePercent`` is checked here, before every batch, over all
    instances of the set; ``capacity`` is the set's capacity (the base of every percent).
    """
    todo = ordered(pending(members, target, skip),
                   prioritize_unhealthy=policy.prioritize_unhealthy_instances)
    if not todo:
        return Verdict("completed")
    base = max(capacity, 1)
    unhealthy = sum(1 for m in members if not m.healthy)
    allowed = percent_of(policy.max_unhealthy_instance_percent, base)
    if unhealthy > allowed:
        return Verdict("faulted", reason=(
            f"{unhealthy} of {base} instances are unhealthy before the next batch; "
            f"maxUnhealthyInstancePercent {policy.max_unhealthy_instance_percent}% of {base}"
            f" instances = {allowed} unhealthy allowed"))
    size = batch_size(policy, base)
    if not policy.enable_cross_zone_upgrade:
        # one fault domain at a time: the one of the first instance in order
        todo = [m for m in todo if m.fault_domain == todo[0].fault_domain]
    return Verdict("batch", batch=tuple(m.instance_id for m in todo[:size]))


def check_upgraded(upgraded: Sequence[Member], policy: RollingUpgradePolicy) -> str | None:
    """After a batch: the breach of ``maxUnhealthyUpgradedInstancePercent`` over every
    instance upgraded so far, in words, or None."""
    count = len(upgraded)
    bad = sum(1 for m in upgraded if not m.healthy)
    allowed = percent_of(policy.max_unhealthy_upgraded_instance_percent, count)
    if bad > allowed:
        return (f"{bad} of {count} upgraded instances are unhealthy; "
                f"maxUnhealthyUpgradedInstancePercent "
                f"{policy.max_unhealthy_upgraded_instance_percent}% of {count} instances = "
                f"{allowed} unhealthy allowed")
    return None


# --- automatic repairs (docs/semantics.md#automatic-repairs) ---------------------------------
REPAIR_PERCENT = 5  # of capacity repaired at once, at least one
REPAIR_FAILURES_TO_SUSPEND = 3  # failed repairs in a row suspend the service


@dataclass(frozen=True)
class Ailing:
    """An instance as the repair decision sees it: running by intent, on a host that
    answers, not Healthy for ``unhealthy_seconds`` (since it last became so, booted or
    was changed)."""

    instance_id: int
    unhealthy_seconds: float
    protected: bool  # protectFromScaleSetActions


def repair_cap(capacity: int) -> int:
    """At most max(1, 5 % of capacity, rounded down) instances are repaired at once."""
    return max(1, capacity * REPAIR_PERCENT // 100)


def repairs_blocked(*, enabled: bool, suspended: bool, upgrading: bool,
                    scaling: bool) -> str | None:
    """Why the set's instances may not be repaired now, or None."""
    if not enabled:
        return "automatic repairs are off"
    if suspended:
        return "automatic repairs are suspended"
    if upgrading:
        return "a rolling upgrade runs"
    if scaling:
        return "the set is scaling"
    return None


def repairs_due(ailing: Sequence[Ailing], *, capacity: int, grace_seconds: float) -> list[int]:
    """The instances to repair now: not protected, unhealthy for longer than the grace
    period, the longest first, at most ``repair_cap(capacity)``."""
    due = [a for a in ailing if not a.protected and a.unhealthy_seconds > grace_seconds]
    due.sort(key=lambda a: (-a.unhealthy_seconds, a.instance_id))
    return [a.instance_id for a in due[:repair_cap(capacity)]]


def after_repairs(failures: int, *, succeeded: int, failed: int) -> tuple[int, bool]:
    """The count of failed repairs in a row after a round of repairs (run at once, so a
    success in it ends the earlier run and its own failures start a new one), and whether
    the service is now suspended."""
    count = failed if succeeded else failures + failed
    return count, count >= REPAIR_FAILURES_TO_SUSPEND
