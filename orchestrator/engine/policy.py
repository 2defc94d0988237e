"""Every decision of the upgrade policy, as pure functions (docs/semantics.md).

Owned here: which instances a scale-set action may touch (``eligible``, ``refuse_protected``),
how a model change reaches instances per mode (``rollout_of``), which instances a scale-in
removes (``scale_in_victims``), percent arithmetic and its stated rounding, the order of
pending instances, batch selection, the two health thresholds, and what a breach does
(``on_breach``). It reads no clock and touches nothing, so property tests exercise it with
any inputs; the drivers in ``usecases`` act on its verdicts.

Called by: dryrun.plan, usecases.controller, usecases.rolling, usecases.sets,
usecases.updates
"""

from __future__ import annotations

from collections.abc import Sequence
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


def scale_in_victims(instances: Sequence[Candidate], count: int, *,
                     scale_in_policy: str) -> list[int] | str:
    """The ``count`` instances a scale-in removes (none protected from scale-in or from
    scale-set actions): highest instanceIds first (Default, NewestVM), or oldest first
    (OldestVM). A refusal in words when too few may go."""
    candidates = [i for i in instances
                  if not i.protect_from_scale_in and not i.protect_from_scale_set_actions]
    if scale_in_policy == "OldestVM":
        candidates.sort(key=lambda i: (i.created_at, i.instance_id))
    else:
        candidates.sort(key=lambda i: i.instance_id, reverse=True)
    if len(candidates) < count:
        return (f"cannot remove {count} instances: only {len(candidates)} are not protected "
                "from scale-in")
    return [i.instance_id for i in candidates[:count]]


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
