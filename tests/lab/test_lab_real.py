"""The real lab, already up (`orch lab up`): checks it without ever bringing it down.

Other real-VM tests share this lab, so these tests only observe it, call the idempotent
``lab_up`` and run commands through ``lab_exec``. A lab that is not up fails them: it is not
a skip, because a lab test that did not run has not passed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from orchestrator import lab

pytestmark = pytest.mark.vm

STATE_DIR = Path(os.environ.get("ORCH_STATE_DIR", "/var/lib/orchestrator"))


def _require_up() -> lab.LabStatus:
    status = lab.lab_status(STATE_DIR)
    assert status.up, f"lab is not up for {STATE_DIR} (run `orch lab up`): {status}"
    return status


def test_status_reports_everything_up() -> None:
    status = _require_up()
    assert status.namespace
    assert status.pool_path == str(lab.pool_dir(STATE_DIR).resolve())
    assert status.problems == ()


def test_lab_up_again_is_fast_and_keeps_the_daemons() -> None:
    before = _require_up()
    started = time.monotonic()
    after = lab.lab_up(STATE_DIR)
    elapsed = time.monotonic() - started
    assert after.up
    assert (after.virtlogd_pid, after.libvirtd_pid) == (before.virtlogd_pid, before.libvirtd_pid)
    assert elapsed < 1.0, f"warm lab up took {elapsed:.2f} s"


def test_network_is_isolated_and_on_the_bridge_in_the_namespace() -> None:
    _require_up()
    xml = subprocess.run(
        ["virsh", "-c", lab.LAB_LIBVIRT_URI, "net-dumpxml", lab.LAB_NETWORK],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert ET.fromstring(xml).find("forward") is None
    addrs = subprocess.run(
        ["ip", "netns", "exec", lab.LAB_NAMESPACE, "ip", "-j", "addr", "show", lab.LAB_BRIDGE],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    locals_ = [a["local"] for link in json.loads(addrs) for a in link["addr_info"]]
    assert lab.LAB_GATEWAY in locals_
    # The root namespace must not carry the lab bridge.
    # (the tests themselves run inside the lab namespace: look at PID 1's)
    root = subprocess.run(["nsenter", "--net=/proc/1/ns/net", "ip", "link", "show", lab.LAB_BRIDGE],
                          check=False, capture_output=True)
    assert root.returncode != 0


def test_dnsmasq_of_the_lab_runs_inside_the_namespace() -> None:
    _require_up()
    pid = int(Path(f"/run/libvirt/network/{lab.LAB_NETWORK}.pid").read_text().strip())
    assert lab.process_alive(pid, comm="dnsmasq")
    where = subprocess.run(
        ["ip", "netns", "identify", str(pid)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert where == [lab.LAB_NAMESPACE]


def test_exec_runs_in_the_namespace_with_the_lab_env(capfd: pytest.CaptureFixture[str]) -> None:
    _require_up()
    script = ('ip netns identify $$; echo "$ORCH_IN_LAB $ORCH_NETWORK $ORCH_POOL"; '
              'readlink /proc/$$/ns/mnt; exit 7')
    code = lab.lab_exec(STATE_DIR, ["sh", "-c", script])
    out = capfd.readouterr().out.split("\n")
    assert code == 7
    assert out[0] == lab.LAB_NAMESPACE
    assert out[1] == "1 orchlab orchlab"
    # the network namespace only: mounts CMD makes (`ip netns add`) are everyone's
    assert out[2] == os.readlink("/proc/self/ns/mnt")


def test_any_state_dir_finds_the_one_lab_of_this_machine(tmp_path: Path) -> None:
    """The lab is one per machine: a second state dir sees it, `lab up` from it is a no-op
    on the daemons, and `lab exec` gives commands that state dir."""
    before = _require_up()
    other = tmp_path / "other-state"
    orch = str(Path(sys.executable).with_name("orch"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([orch, "--state-dir", str(other), *args], capture_output=True,
                              text=True, timeout=120, check=False)

    status = run("lab", "status", "-o", "json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert (shown["up"], shown["libvirtdPid"]) == (True, before.libvirtd_pid), shown
    up = run("lab", "up", "-o", "json")
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["libvirtdPid"] == before.libvirtd_pid
    seen = run("lab", "exec", "--", "sh", "-c", "echo $ORCH_STATE_DIR $ORCH_POOL")
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.split() == [str(other), lab.LAB_POOL]
