"""The lab's simulated hosts for real: `lab up --hosts 2`, again, a killed host daemon, `lab
down`, and the single-host lab again.

Runs inside the lab namespace (`orch lab exec -- pytest`) like the other real tests, because
the controller reaches the hosts from there. It brings the lab down and up: it ends with the
single-host lab up (what `make test` starts with), whatever hosts there were before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator import lab, labconfig

pytestmark = pytest.mark.vm

STATE_DIR = Path(os.environ.get("ORCH_STATE_DIR", "/var/lib/orchestrator"))
ORCH = str(Path(sys.executable).with_name("orch"))


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=check)


def _virsh(uri: str, *args: str) -> str:
    return _sh("virsh", "-q", "-c", uri, *args).stdout.strip()


def _orch_json(*args: str) -> Any:
    return json.loads(_sh(ORCH, "--state-dir", str(STATE_DIR), *args, "-o", "json").stdout)


def _lab_links() -> dict[str, labconfig.IpLink]:
    return labconfig.ip_links(_sh("ip", "-j", "addr", "show").stdout)


def _lab_routes() -> dict[str, str]:
    return labconfig.route_gateways(_sh("ip", "-j", "route", "show").stdout)


def _timed(work: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = work()
    return result, time.monotonic() - started


def test_two_hosts_up_idempotent_recovered_down_and_single_host_again(
    record_property: Any,
) -> None:
    where = _sh("ip", "netns", "identify", str(os.getpid())).stdout.split()
    assert where == [lab.LAB_NAMESPACE], "run inside the lab: orch lab exec -- pytest ..."
    assert lab.lab_status(STATE_DIR).up, "the lab is not up (run `orch lab up`)"
    plans = lab.host_plans(2)

    # --- up --------------------------------------------------------------------------------------
    lines: list[str] = []
    status, took = _timed(lambda: lab.lab_up(STATE_DIR, hosts=2, progress=lines.append))
    record_property("lab_up_hosts_2_seconds", round(took, 2))
    assert status.up, status
    hosts = lab.lab_hosts(STATE_DIR)
    assert [(h.name, h.uri, h.fault_domain, h.network, h.pool, h.answers) for h in hosts] == [
        (p.name, p.uri, p.fault_domain, p.network, p.pool, True) for p in plans]
    routes, links = _lab_routes(), _lab_links()
    uuids = set()
    for plan in plans:
        # the controller's way: qemu+tcp:// from this namespace
        assert _virsh(plan.uri, "uri") == plan.uri
        assert _virsh(plan.uri, "hostname") == plan.name  # its own UTS namespace
        assert "Active:         yes" in _virsh(plan.uri, "net-info", plan.network)
        assert "State:          running" in _virsh(plan.uri, "pool-info", plan.pool)
        # its own libvirt: none of the lab's network or pool, nor another host's
        assert _virsh(plan.uri, "net-list", "--all", "--name").split() == [plan.network]
        assert _virsh(plan.uri, "pool-list", "--all", "--name").split() == [plan.pool]
        assert routes[str(plan.subnet)] == plan.address
        assert links[plan.veth].master == labconfig.HOSTS_BRIDGE
        caps, probe = _timed(lambda uri=plan.uri: _virsh(uri, "capabilities"))
        record_property(f"capabilities_probe_seconds_{plan.name}", round(probe, 2))
        uuids.add(caps.split("<uuid>")[1].split("</uuid>")[0])
    assert len(uuids) == 2  # each host its own host UUID
    listed = _orch_json("lab", "hosts")
    assert [{k: h[k] for k in ("name", "uri", "faultDomain", "network", "pool", "answers")}
            for h in listed] == [
        {"name": p.name, "uri": p.uri, "faultDomain": p.fault_domain, "network": p.network,
         "pool": p.pool, "answers": True} for p in plans]
    assert [h["name"] for h in _orch_json("lab", "status")["hosts"]] == ["lab-1", "lab-2"]

    # --- up again: nothing changes -------------------------------------------------------------------
    again: list[str] = []
    status2, took = _timed(lambda: lab.lab_up(STATE_DIR, hosts=2, progress=again.append))
    record_property("lab_up_hosts_2_again_seconds", round(took, 2))
    assert again == []
    assert status2.up
    assert [(h.virtlogd_pid, h.libvirtd_pid) for h in status2.hosts] == [
        (h.virtlogd_pid, h.libvirtd_pid) for h in status.hosts]
    assert {n: links[n].ifindex for n in (p.veth for p in plans)} == {
        n: link.ifindex for n, link in _lab_links().items() if n.startswith("veth-lab-")}

    # --- a host's libvirtd killed: `lab up` (the count is remembered) restarts it ------------------
    killed = status2.hosts[1].libvirtd_pid
    assert killed is not None
    os.kill(killed, 9)
    broken = lab.lab_status(STATE_DIR)
    assert not broken.up and broken.hosts[0].up and not broken.hosts[1].up
    recovered = lab.lab_up(STATE_DIR)
    assert recovered.up, recovered
    assert recovered.hosts[1].libvirtd_pid not in (None, killed)
    assert _virsh(plans[1].uri, "hostname") == plans[1].name

    # --- down: nothing of the hosts is left ------------------------------------------------------------
    daemons = [(pid, name) for h in recovered.hosts
               for pid, name in ((h.virtlogd_pid, "virtlogd"), (h.libvirtd_pid, "libvirtd"))]
    dnsmasq = [lab.read_pid_file(labconfig.host_run_dir(p) / "network" / f"{p.network}.pid")
               for p in plans]
    assert all(pid is not None for pid in dnsmasq)
    down, took = _timed(lambda: lab.lab_down(STATE_DIR))
    record_property("lab_down_hosts_2_seconds", round(took, 2))
    assert down.hosts == ()
    namespaces = _sh("ip", "netns", "list").stdout
    links = _lab_links()
    for plan in plans:
        assert plan.namespace not in namespaces
        assert plan.veth not in links
        assert str(plan.subnet) not in _lab_routes()
        assert not labconfig.host_run_dir(plan).exists()
    assert labconfig.HOSTS_BRIDGE not in links
    for pid, name in daemons:
        assert pid is not None and not lab.process_alive(pid, comm=name), (pid, name)
    for pid in dnsmasq:
        assert pid is not None and not lab.process_alive(pid, comm="dnsmasq"), pid
    assert lab.lab_hosts(STATE_DIR) == []

    # --- the single-host lab again --------------------------------------------------------------------
    single, took = _timed(lambda: lab.lab_up(STATE_DIR))
    record_property("lab_up_single_after_hosts_seconds", round(took, 2))
    assert single.up, single
    assert single.hosts == ()
