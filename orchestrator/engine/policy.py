"""Upgrade policy as pure functions: which instances the next batch takes, and when a
rolling upgrade must stop (SPEC §2, following the seed document).

Owned here: percent arithmetic and its stated rounding, the order of pending instances,
batch selection, and the two health thresholds.
Called by: upgrades (the driver that acts on real or fake hypervisors)
It reads no clock and touches nothing, so property tests exercise it with any inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from orchestrator.model import RollingUpgradePolicy


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
