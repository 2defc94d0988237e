"""Real-VM tests: they boot tiny VMs in the lab and check inside them over SSH.

They must run inside the lab namespace (`make test` runs `orch lab exec -- pytest`); outside
it they fail with that instruction instead of skipping. Each session gets its own state
dir with freshly built images (tiny:1, tiny:2, tiny:3 --broken); every scale set a test creates is deleted afterwards, and the
test checks itself that libvirt holds nothing of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ORCH = str(Path(sys.executable).with_name("orch"))


@dataclass
class Orch:
    """Runs the real `orch` CLI against one state dir, the way a user would."""

    state_dir: Path
    created: list[str] = field(default_factory=list)

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([ORCH, "--state-dir", str(self.state_dir), *args],
                              capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"orch {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stderr}\n{proc.stdout}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def new_set_name(self) -> str:
        name = f"test-{uuid.uuid4().hex[:6]}"
        self.created.append(name)
        return name

    def instances(self, set_name: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.json("vmss", "list-instances", "--name", set_name)
        return found

    def view(self, set_name: str, instance_id: int) -> dict[str, Any]:
        found: dict[str, Any] = self.json("vmss", "get-instance-view", "--name", set_name,
                                          "--instance-id", str(instance_id))
        return found

    def sh(self, set_name: str, instance_id: int, script: str) -> dict[str, Any]:
        result: dict[str, Any] = self.json("vmss", "run-command", "invoke", "--name", set_name,
                                           "--instance-id", str(instance_id), "--scripts", script)
        return result


def virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-q", "-c", "qemu:///system", *args], capture_output=True,
                          text=True, check=True, timeout=60).stdout


def libvirt_objects(prefix: str) -> dict[str, list[str]]:
    """Domains, lab-pool volumes and lab-network DHCP hosts whose names start with prefix."""
    domains = [d for d in virsh("list", "--all", "--name").split() if d.startswith(prefix)]
    volumes = [line.split()[0] for line in virsh("vol-list", "orchlab").splitlines()
               if line.split() and line.split()[0].startswith(prefix)]
    hosts = [line for line in virsh("net-dumpxml", "orchlab").splitlines()
             if "<host " in line and f"name='{prefix}" in line]
    return {"domains": domains, "volumes": volumes, "hosts": hosts}


def assert_exactly(set_name: str, ids: list[int]) -> None:
    """libvirt holds exactly the instances ``ids`` of the set: a domain, one OS volume, the
    seed volume and one DHCP reservation each, and the console logs virtlogd keeps of them;
    nothing else with the set's prefix."""
    held = libvirt_objects(f"{set_name}-")
    names = [f"{set_name}-{i}" for i in ids]
    assert sorted(held["domains"]) == sorted(names), held
    logs = [v for v in held["volumes"] if re.fullmatch(r".*-console\.log(\.\d+)?", v)]
    assert all(re.sub(r"-console\.log(\.\d+)?$", "", v) in names for v in logs), logs
    held["volumes"] = [v for v in held["volumes"] if v not in logs]
    for name in names:
        own = [v for v in held["volumes"] if v.startswith(f"{name}-")]
        assert len([v for v in own if re.fullmatch(rf"{re.escape(name)}-os\d+\.qcow2", v)]) == 1, own
        assert f"{name}-seed.iso" in own, own
        assert len(own) == 2, own
        assert len([h for h in held["hosts"] if f"name='{name}'" in h]) == 1, held["hosts"]
    assert len(held["volumes"]) == 2 * len(ids), held["volumes"]
    assert len(held["hosts"]) == len(ids), held["hosts"]


def healthy_after(stderr: str, set_name: str) -> dict[int, float]:
    """Seconds each instance of ``set_name`` took to become Healthy, by instanceId, from a
    command's progress lines (``[  12.3s] web-0: Healthy after 6.5s``): the boot, from the
    start of the health wait (the domain just started) to the first passing probe."""
    found: dict[int, float] = {}
    for m in re.finditer(rf"\] {re.escape(set_name)}-(\d+): Healthy after ([0-9.]+)s$",
                         stderr, re.MULTILINE):
        found[int(m[1])] = float(m[2])
    return found


def record_boots(record_property: Callable[[str, object], None], stderr: str,
                 set_name: str) -> dict[int, float]:
    """Records each boot time of a command as a ``boot_seconds`` property (JUnit XML, read
    by scripts/nightly_report.py); returns them."""
    boots = healthy_after(stderr, set_name)
    for seconds in boots.values():
        record_property("boot_seconds", seconds)
    return boots


@contextlib.contextmanager
def state_dir_with(*builds: tuple[str, ...], prefix: str = "orch-vmtest-") -> Iterator[Orch]:
    """An `Orch` on a fresh state dir with the images ``builds`` names (each the arguments of
    `image build`); the sets it made and the dir go afterwards."""
    if os.environ.get("ORCH_IN_LAB") != "1":
        pytest.fail("real-VM tests run inside the lab: `make test`, or "
                    "`.venv/bin/orch lab up && .venv/bin/orch lab exec -- .venv/bin/pytest tests/vm`")
    # not under /tmp/pytest-*: libvirt's qemu user must traverse to images and logs
    state_dir = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    os.chmod(state_dir, 0o711)
    o = Orch(state_dir)
    try:
        for build in builds:
            o.run("image", "build", *build)
        yield o
    finally:
        for name in o.created:
            o.run("vmss", "delete", "--name", name, check=False)
        shutil.rmtree(state_dir, ignore_errors=True)


@contextlib.contextmanager
def controller_running(orch: Orch, *, interval: float) -> Iterator[subprocess.Popen[str]]:
    """`orch controller run --interval` in the background for as long as the block runs."""
    proc = subprocess.Popen([ORCH, "--state-dir", str(orch.state_dir), "controller", "run",
                             "--interval", str(interval)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture(scope="session")
def orch() -> Iterator[Orch]:
    with state_dir_with(("tiny", "--version", "1"), ("tiny", "--version", "2"),
                        ("tiny", "--version", "3", "--broken")) as o:  # 3: health fails, SSH works
        yield o
