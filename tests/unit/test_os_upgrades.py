"""NAME:latest and automatic OS upgrades (usecases.osupgrades) on the fake world: the version
order, a newer version rolled out by the controller with the rolling policy, a failed one
rolled back and never tried again, disableAutomaticRollback, the history."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.cli import render
from orchestrator.errors import InvalidInput
from orchestrator.model import ScaleSetSpec, validate, version_key
from orchestrator.usecases import osupgrades, views
from tests.world import Reconciler, Upgrades, World


def spec(capacity: int = 3, **os_policy: Any) -> ScaleSetSpec:
    return validate(ScaleSetSpec, {
        "name": "web", "capacity": capacity, "model": {"image": "tiny:latest"},
        "upgradePolicy": {
            "mode": "Rolling",
            "rollingUpgradePolicy": {"maxBatchInstancePercent": 34,
                                     "maxUnhealthyInstancePercent": 34,
                                     "maxUnhealthyUpgradedInstancePercent": 34},
            "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True, **os_policy}}})


def controller_pass(world: World) -> Any:
    return Reconciler(Upgrades(world.service)).run_pass()


def versions(world: World) -> list[str]:
    return [i.image for i in world.store.list_instances("web")]


def history(world: World) -> list[dict[str, Any]]:
    return [render.os_upgrade_json(u) for u in osupgrades.history(world.env, "web")]


def broken(world: World, version: str) -> None:
    world.register_image("tiny", version)
    world.prober.broken_images.add(str(world.registry.get(f"tiny:{version}").disk))


@pytest.mark.parametrize(("older", "newer"), [
    ("2", "10"), ("20261127", "20261201"), ("1.9", "1.10"), ("1.2", "1.2.1"), ("2", "2a")])
def test_versions_compare_part_by_part_numerically(older: str, newer: str) -> None:
    assert version_key(older) < version_key(newer)


@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=4),
       st.lists(st.integers(0, 10**9), min_size=1, max_size=4))
def test_numeric_versions_order_as_integer_tuples(a: list[int], b: list[int]) -> None:
    key_a, key_b = (version_key(".".join(map(str, v))) for v in (a, b))
    assert (key_a < key_b) == (a < b)


def test_latest_is_the_highest_version_and_instances_record_theirs(world: World) -> None:
    for version in ("2", "10", "9"):
        world.register_image("tiny", version)
    assert world.registry.get("tiny:latest").ref == "tiny:10"
    world.service.create(spec(2))
    assert versions(world) == ["tiny:10", "tiny:10"]
    shown = render.set_json(views.show_set(world.env, "web"))
    assert shown["model"]["image"] == "tiny:latest"  # the model keeps latest


def test_a_newer_version_is_rolled_out_then_a_failing_one_rolled_back_and_skipped(
        world: World) -> None:
    world.service.create(spec(3))
    assert versions(world) == ["tiny:1"] * 3
    assert controller_pass(world).actions == []  # nothing newer
    world.register_image("tiny", "2")
    report = controller_pass(world)
    assert any("automatic OS upgrade tiny:1 -> tiny:2" in a for a in report.actions), report
    assert versions(world) == ["tiny:2"] * 3
    [run] = history(world)
    assert (run["fromVersions"], run["targetVersion"], run["result"]) == (
        ["tiny:1"], "tiny:2", "Succeeded")

    broken(world, "3")
    report = controller_pass(world)
    assert any("automatic OS upgrade to tiny:3 failed" in p for p in report.problems)
    assert versions(world) == ["tiny:2"] * 3  # the upgraded ones came back
    run = history(world)[0]
    assert run["result"] == "RolledBack" and run["rollback"]["toVersion"] == "tiny:2"
    assert len(run["rollback"]["instanceIds"]) == 1  # the first batch only: then Faulted
    # tiny:3 is never tried again, and a scale-out does not use it either
    assert controller_pass(world).actions == []
    world.service.scale("web", 4)
    assert versions(world) == ["tiny:2"] * 4
    # a newer version is
    world.register_image("tiny", "4")
    controller_pass(world)
    assert versions(world) == ["tiny:4"] * 4
    assert [r["result"] for r in history(world)] == ["Succeeded", "RolledBack", "Succeeded"]


def test_without_automatic_rollback_a_failed_rollout_stays_as_it_is(world: World) -> None:
    world.service.create(spec(3, disableAutomaticRollback=True))
    broken(world, "2")
    controller_pass(world)
    assert sorted(versions(world)) == ["tiny:1", "tiny:1", "tiny:2"]
    assert history(world)[0]["result"] == "Faulted"
    controller_pass(world)  # neither retried nor pushed onto the others
    assert sorted(versions(world)) == ["tiny:1", "tiny:1", "tiny:2"]
    assert len(history(world)) == 1


def test_off_nothing_follows(world: World) -> None:
    world.service.create(spec(2, enableAutomaticOSUpgrade=False))
    world.register_image("tiny", "2")
    controller_pass(world)
    assert versions(world) == ["tiny:1", "tiny:1"] and history(world) == []


def test_bad_input(world: World) -> None:
    with pytest.raises(InvalidInput, match="automatic OS upgrades follow NAME:latest"):
        validate(ScaleSetSpec, {"name": "web", "capacity": 1, "model": {"image": "tiny:1"},
                                "upgradePolicy": {"automaticOSUpgradePolicy": {
                                    "enableAutomaticOSUpgrade": True}}})
    with pytest.raises(InvalidInput, match="reserved"):
        world.registry._check_new("tiny", "latest")
