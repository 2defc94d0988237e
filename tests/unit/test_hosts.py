"""Several hosts on fake hypervisors with a fake clock: host registration and its checks,
placement over fault domains and hosts, cordon, scale-in from the fullest fault domain,
rolling batches that never span two fault domains, a host that stops answering, and the
store of a single-host state dir carried over."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from typing import Any

import pytest

from orchestrator.engine.copies import copy_volume, files_of
from orchestrator.errors import EnvironmentProblem, InvalidInput, OperationFailed
from orchestrator.model import ScaleSetSpec, validate
from orchestrator.store import Store
from orchestrator.usecases import hosts
from tests.world import Reconciler, Upgrades, World, run, snapshot

from .fakecli import install

MiB = 2**20


def three_hosts(world: World) -> None:
    for n in (1, 2, 3):
        world.add_host(f"h{n}", fault_domain=f"fd-{n}")


def spec(capacity: int, **rolling: Any) -> ScaleSetSpec:
    return validate(ScaleSetSpec, {
        "name": "web", "capacity": capacity, "model": {"image": "tiny:1"},
        "upgradePolicy": {"mode": "Rolling", "rollingUpgradePolicy": {
            "maxBatchInstancePercent": 34, "maxUnhealthyInstancePercent": 34, **rolling}}})


def spread(world: World) -> dict[int, str]:
    """instanceId -> the fake host its domain is defined on (checked against the store)."""
    out = {}
    for inst in world.store.list_instances("web"):
        assert world.host_of(inst.name) == inst.host, inst
        out[inst.instance_id] = inst.host
    return out


class TestRegistration:
    def test_a_registered_host_is_listed_with_its_room(self, world: World) -> None:
        world.add_host("h1", fault_domain="rack-a")
        [view] = run(hosts.list_hosts(world.env))
        assert (view.name, view.fault_domain, view.state, view.instances) == (
            "h1", "rack-a", "Ready", 0)
        assert view.pool_bytes_free and view.addresses_free and view.addresses_free > 100

    @pytest.mark.parametrize(("field", "value", "message"), [
        ("name", "H1", "invalid host name"),
        ("uri", "http://h1/", "invalid libvirt URI"),
        ("uri", "qemu+tcp://h1/system; rm -rf /", "invalid libvirt URI"),
        ("fault_domain", "Rack A", "invalid fault domain"),
        ("network", "no such net", "invalid network"),
    ])
    def test_bad_input_is_refused_and_changes_nothing(self, world: World, field: str,
                                                      value: str, message: str) -> None:
        hv = world.add_host("h1", register=False)
        before = snapshot(world.state_dir)
        args = {"name": "h1", "uri": hv.uri, "fault_domain": None, "network": "default",
                "pool": "default", field: value}
        with pytest.raises(InvalidInput, match=message):
            run(hosts.add(world.env, **args))
        assert snapshot(world.state_dir) == before
        assert world.store.list_hosts() == []

    def test_missing_network_or_pool_on_the_host_is_refused(self, world: World) -> None:
        hv = world.add_host("h1", register=False)
        for args, message in (({"network": "other"}, "network other does not exist"),
                              ({"pool": "other"}, "storage pool other does not exist")):
            with pytest.raises(InvalidInput, match=message):
                run(hosts.add(world.env, **{"name": "h1", "uri": hv.uri, "fault_domain": None,
                                            "network": "default", "pool": "default", **args}))
        assert world.store.list_hosts() == []

    def test_a_host_without_the_engines_domain_type_is_refused(
            self, world: World, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> None:
        cli = install(world, monkeypatch, capsys)  # its engine runs domain type qemu
        hv = world.add_host("h1", register=False)
        add = ("host", "add", "--name", "h1", "--uri", hv.uri)
        before = snapshot(world.state_dir)
        for offered, said in ((["kvm"], "kvm"), ([], "none")):
            hv.set_domain_types(offered)
            code, out, err = cli.run(*add)
            assert (code, out) == (2, ""), err
            assert err == (f"error: host h1: domain type qemu is not offered there (it offers "
                           f"{said} for x86_64 guests)\n")
            assert snapshot(world.state_dir) == before
        hv.set_domain_types(["kvm", "qemu"])
        code, out, err = cli.run(*add, "-o", "json")
        assert code == 0 and json.loads(out)["state"] == "Ready", err
        assert [h.name for h in world.store.list_hosts()] == ["h1"]

    def test_an_unreachable_host_is_an_environment_problem(self, world: World) -> None:
        with pytest.raises(EnvironmentProblem, match="cannot reach libvirt"):
            run(hosts.add(world.env, name="h9", uri="qemu+tcp://10.250.0.9/system",
                          fault_domain=None, network="default", pool="default"))
        assert world.store.list_hosts() == []

    def test_host_list_shows_each_hosts_own_memory(self, world: World, monkeypatch:
                                                   pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
        cli = install(world, monkeypatch, capsys)
        for name, mib in (("h1", 1024), ("h2", 3072), ("h3", 2048)):
            world.add_host(name).set_memory_available(mib * MiB)
        world.fakes["qemu+tcp://h3/system"].set_unavailable()
        code, out, err = cli.run("host", "list", "-o", "json")
        assert code == 0, err
        assert {h["name"]: h["memoryMiBFree"] for h in json.loads(out)} == {
            "h1": 1024, "h2": 3072, "h3": None}

    def test_a_host_with_instances_cannot_be_removed(self, world: World) -> None:
        three_hosts(world)
        world.service.create(spec(3))
        with pytest.raises(InvalidInput, match="holds 1 instance"):
            run(hosts.remove(world.env, "h2"))
        world.service.delete("web")
        # the set is gone, the copy of its image stays on each host for later sets
        tiny = files_of(world.registry.get("tiny:1"))
        assert [f.key for f in tiny] == ["disk", "kernel", "initrd"]
        assert {v.name for v in world.fakes["qemu+tcp://h2/system"].list_volumes("default")} == {
            copy_volume(f.sha256, f.fmt) for f in tiny}
        assert run(hosts.remove(world.env, "h2")) == []
        assert [h.name for h in world.store.list_hosts()] == ["h1", "h3"]
        assert world.fakes["qemu+tcp://h2/system"].list_volumes("default") == []  # its copies went with it
        assert world.store.image_copies("h2") == []


class TestPlacement:
    def test_instances_spread_evenly_over_fault_domains(self, world: World) -> None:
        three_hosts(world)
        world.service.create(spec(6))
        assert Counter(spread(world).values()) == {"h1": 2, "h2": 2, "h3": 2}
        listed = world.service.list_instances("web")
        assert {i["faultDomain"] for i in listed} == {"fd-1", "fd-2", "fd-3"}
        assert {i["healthState"] for i in listed} == {"Healthy"}
        view = world.service.set_view(world.store.get_set("web"))
        assert view["faultDomains"] == {"fd-1": 2, "fd-2": 2, "fd-3": 2}
        # nothing went to the implicit host
        assert world.hv.list_domains() == []

    def test_hosts_sharing_a_fault_domain_share_its_instances(self, world: World) -> None:
        world.add_host("a1", fault_domain="rack-a")
        world.add_host("a2", fault_domain="rack-a")
        world.add_host("b1", fault_domain="rack-b")
        world.service.create(spec(4))
        assert Counter(spread(world).values()) == {"b1": 2, "a1": 1, "a2": 1}

    def test_a_cordoned_host_gets_no_new_instances(self, world: World) -> None:
        three_hosts(world)
        world.service.create(spec(3))
        run(hosts.set_cordoned(world.env, "h3", True))
        world.service.scale("web", 7)
        placed = Counter(spread(world).values())
        assert placed == {"h1": 3, "h2": 3, "h3": 1}

    def test_the_model_may_restrict_its_fault_domains(self, world: World) -> None:
        three_hosts(world)
        restricted = validate(ScaleSetSpec, {**spec(4).to_json_dict(), "model": {
            "image": "tiny:1", "faultDomains": ["fd-1", "fd-3"]}})
        world.service.create(restricted)
        assert Counter(spread(world).values()) == {"h1": 2, "h3": 2}

    def test_a_host_without_memory_for_an_instance_gets_none(self, world: World) -> None:
        three_hosts(world)
        world.fakes["qemu+tcp://h2/system"].set_memory_available(100 * MiB)
        world.service.create(spec(6))  # 256 MiB each
        assert Counter(spread(world).values()) == {"h1": 3, "h3": 3}

    def test_the_memory_its_guests_use_leaves_a_host_no_room(self, world: World) -> None:
        three_hosts(world)
        world.fakes["qemu+tcp://h2/system"].set_memory_available(600 * MiB)
        world.service.create(spec(3))
        world.service.scale("web", 9)  # h2 runs 256 MiB of 600: room for one more, not two
        assert Counter(spread(world).values()) == {"h1": 4, "h2": 2, "h3": 3}

    def test_no_memory_anywhere_is_refused_naming_memory(self, world: World) -> None:
        three_hosts(world)
        for hv in world.fakes.values():
            hv.set_memory_available(100 * MiB)
        with pytest.raises(InvalidInput, match="no host has room for instance 1 of 2: "
                                               "h1: 100 MiB of memory free, 256 needed; h2: "):
            world.service.create(spec(2))
        assert all(hv.list_domains() == [] for hv in world.fakes.values())

    def test_no_room_anywhere_is_refused_before_anything_is_made(self, world: World) -> None:
        three_hosts(world)
        for hv in world.fakes.values():
            hv.set_pool_capacity("default", 1)
        with pytest.raises(InvalidInput, match="no host has room for instance 1 of 2"):
            world.service.create(spec(2))
        assert all(hv.list_domains() == [] for hv in world.fakes.values())

    def test_scale_in_takes_from_the_fullest_fault_domain_first(self, world: World) -> None:
        three_hosts(world)
        world.service.create(spec(3))
        run(hosts.set_cordoned(world.env, "h2", True))
        run(hosts.set_cordoned(world.env, "h3", True))
        world.service.scale("web", 5)  # h1 now holds 3
        world.service.scale("web", 3)
        assert Counter(spread(world).values()) == {"h1": 1, "h2": 1, "h3": 1}


class TestRollingByFaultDomain:
    def test_a_batch_never_spans_two_fault_domains(self, world: World) -> None:
        three_hosts(world)
        world.register_image("tiny", "2")
        world.service.create(spec(6, maxBatchInstancePercent=50, maxUnhealthyInstancePercent=50))
        fd_of = {i: f"fd-{h[1]}" for i, h in spread(world).items()}
        up = Upgrades(world.service)
        up.update("web", {"model": {"image": "tiny:2"}})
        status = up.latest_status("web")
        assert status["runningStatus"]["code"] == "Completed"
        batches = [b["instances"] for b in status["batches"]]
        assert all(len({fd_of[i] for i in b}) == 1 for b in batches), batches
        # a fault domain is done before the next one starts
        order = [fd_of[b[0]] for b in batches]
        assert order == sorted(set(order), key=order.index) and len(order) == 3, order
        assert {i.image for i in world.store.list_instances("web")} == {"tiny:2"}

    def test_cross_zone_upgrade_lifts_the_rule(self, world: World) -> None:
        three_hosts(world)
        world.register_image("tiny", "2")
        world.service.create(spec(6, maxBatchInstancePercent=50, maxUnhealthyInstancePercent=50,
                                  enableCrossZoneUpgrade=True))
        up = Upgrades(world.service)
        up.update("web", {"model": {"image": "tiny:2"}})
        assert [b["instances"] for b in up.latest_status("web")["batches"]] == [
            [0, 1, 2], [3, 4, 5]]

    def test_surge_replacements_go_to_the_old_instances_fault_domain(self, world: World) -> None:
        three_hosts(world)
        world.register_image("tiny", "2")
        world.service.create(spec(3, maxSurge=True))
        before = spread(world)
        up = Upgrades(world.service)
        up.update("web", {"model": {"image": "tiny:2"}})
        after = spread(world)
        assert Counter(after.values()) == Counter(before.values())
        status = up.latest_status("web")
        for batch in status["batches"]:
            [old], [new] = batch["instances"], batch["succeeded"]
            assert after[new] == before[old]


def test_a_plan_over_hosts_takes_one_fault_domain_per_batch(world: World) -> None:
    from orchestrator.dryrun.plan import make_plan

    three_hosts(world)
    world.register_image("tiny", "2")
    world.service.create(spec(6, maxBatchInstancePercent=50, maxUnhealthyInstancePercent=50))
    fd_of = {i: f"fd-{h[1]}" for i, h in spread(world).items()}
    before = snapshot(world.state_dir)
    plan = run(make_plan(world.env, "web", changes={"model": {"image": "tiny:2"}}))
    assert plan["outcome"] == "Completed", plan
    assert [b["faultDomain"] for b in plan["batches"]] == ["fd-1", "fd-2", "fd-3"]
    for batch in plan["batches"]:
        assert {fd_of[i] for i in batch["instances"]} == {batch["faultDomain"]}
    assert plan["predictedSeconds"] > 3 * world.hv.boot_seconds
    assert snapshot(world.state_dir) == before  # a dry run changes nothing
    assert {i.image for i in world.store.list_instances("web")} == {"tiny:1"}


class TestUnreachableHost:
    def test_its_instances_show_unknown_and_count_unhealthy(self, world: World) -> None:
        three_hosts(world)
        world.register_image("tiny", "2")
        world.service.create(spec(3, maxUnhealthyInstancePercent=0))
        on_h2 = next(i for i, h in spread(world).items() if h == "h2")
        world.fakes["qemu+tcp://h2/system"].set_unavailable()
        listed = {i["instanceId"]: i for i in world.service.list_instances("web")}
        assert (listed[on_h2]["powerState"], listed[on_h2]["healthState"]) == (
            "unknown", "Unknown")
        assert [v.state for v in run(hosts.list_hosts(world.env))] == [
            "Ready", "Unreachable", "Ready"]
        up = Upgrades(world.service)
        with pytest.raises(Exception, match="unhealthy before the next batch"):
            up.update("web", {"model": {"image": "tiny:2"}})
        # its instance was left alone; once the host answers, the next pass goes on
        world.fakes["qemu+tcp://h2/system"].set_unavailable(False)
        assert world.store.find_instance("web", on_h2).image == "tiny:1"  # type: ignore[union-attr]
        again = up.start_rolling("web")
        assert again["runningStatus"]["code"] == "Completed", again
        assert {i.image for i in world.store.list_instances("web")} == {"tiny:2"}


def test_an_upgrade_waits_for_a_host_that_stopped_answering_and_the_controller_finishes_it(
        world: World) -> None:
    three_hosts(world)
    world.register_image("tiny", "2")
    world.service.create(spec(6))
    on_h2 = sorted(i for i, h in spread(world).items() if h == "h2")
    h2 = world.fakes["qemu+tcp://h2/system"]
    h2.set_unavailable()
    calls_before = len(h2.calls)
    up = Upgrades(world.service)
    with pytest.raises(OperationFailed, match=r"paused: host h2 does not answer; instances "
                                              + ", ".join(map(str, on_h2)) + " wait for it"):
        up.update("web", {"model": {"image": "tiny:2"}})
    status = up.latest_status("web")
    assert status["runningStatus"]["code"] == "RollingForward", status
    gens = {i.instance_id: i.image for i in world.store.list_instances("web")}
    assert {i for i, image in gens.items() if image == "tiny:1"} == set(on_h2)
    assert h2.calls[calls_before:] == [("list_domains", "")] * (len(h2.calls) - calls_before)
    h2.set_unavailable(False)
    report = Reconciler(up).run_pass()
    assert any("resuming an interrupted rolling upgrade" in a for a in report.actions), report
    assert up.latest_status("web")["runningStatus"]["code"] == "Completed"
    assert {i.image for i in world.store.list_instances("web")} == {"tiny:2"}


def test_a_single_host_state_dir_keeps_its_instances_on_local(world: World) -> None:
    world.service.create(spec(2))
    world.store.close()
    db = world.state_dir / "orchestrator.db"
    with sqlite3.connect(db) as conn:  # as version 4 left it: no host column, no hosts table
        conn.execute("DROP TABLE hosts")
        conn.execute("ALTER TABLE instances DROP COLUMN host")
        conn.execute("UPDATE meta SET value='4' WHERE key='schema_version'")
    store = Store(db)
    assert [i.host for i in store.list_instances("web")] == ["local", "local"]
    assert store.list_hosts() == []
    store.close()




def test_the_labs_hosts_are_registered_and_forgotten_with_it(world: World) -> None:
    world.service.create(spec(1))  # on the implicit host, before any host is registered
    lab = [("lab-1", "qemu+tcp://10.214.0.1/system", "fd-1", "lab-1", "lab-1"),
           ("lab-2", "qemu+tcp://10.214.0.2/system", "fd-2", "lab-2", "lab-2")]
    said = hosts.sync_lab_hosts(world.store, lab, now="x")
    assert said == ["host lab-1 registered (qemu+tcp://10.214.0.1/system, fault domain fd-1)",
                    "host lab-2 registered (qemu+tcp://10.214.0.2/system, fault domain fd-2)"]
    assert hosts.sync_lab_hosts(world.store, lab, now="x") == []  # idempotent
    # an instance lives on lab-2: when the lab has no hosts any more, only lab-1 goes
    world.store._db.execute("UPDATE instances SET host='lab-2'")
    assert hosts.sync_lab_hosts(world.store, [], now="x") == ["host lab-1 unregistered"]
    assert [h.name for h in world.store.list_hosts()] == ["lab-2"]
