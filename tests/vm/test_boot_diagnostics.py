"""Boot diagnostics on real tiny VMs: the serial console virtlogd keeps in the lab's pool is
read back through libvirt (`vmss boot-diagnostics get-boot-log`), goes with its instance, and
a broken image's failure carries its last console lines (docs/semantics.md#boot-diagnostics).
"""

from __future__ import annotations

import re

import pytest

from .conftest import Orch, assert_exactly, libvirt_objects

pytestmark = pytest.mark.vm

# printed by tiny's boot script before dropbear starts: on the console before any probe
LEASE = re.compile(r"udhcpc: lease of (\d+\.\d+\.\d+\.\d+) obtained from ")


def test_the_boot_log_is_read_from_the_host_and_goes_with_the_instance(orch: Orch) -> None:
    name = orch.new_set_name()
    orch.run("vmss", "create", "--name", name, "--image", "tiny:1", "--instance-count", "1")

    log = orch.run("vmss", "boot-diagnostics", "get-boot-log", "--name", name,
                   "--instance-id", "0").stdout
    print(log)
    # virtlogd's file in the pool, a volume once libvirt looked again (the read made it look)
    assert f"{name}-0-console.log" in libvirt_objects(f"{name}-")["volumes"]
    assert_exactly(name, [0])
    # the kernel's own lines (tiny boots with loglevel=6: its notices and warnings), then
    # the boot script's, from the seed to DHCP (the instance's own address) and on
    assert "Linux version" in log and "Kernel command line: console=ttyS0" in log, log
    ip = orch.instances(name)[0]["ipAddress"]
    assert "nocloud: seed found on /dev/vd" in log, log
    lease = LEASE.search(log)
    assert lease and lease[1] == ip, log
    assert "\x1b" not in log and "\r" not in log

    data = orch.json("vmss", "boot-diagnostics", "get-boot-log", "--name", name,
                     "--instance-id", "0")
    assert (data["name"], data["instanceId"], data["host"]) == (f"{name}-0", 0, "local")
    assert data["log"].startswith(log[:200])
    tail = orch.run("vmss", "boot-diagnostics", "get-boot-log", "--name", name,
                    "--instance-id", "0", "--tail-bytes", "120").stdout
    assert 0 < len(tail.encode()) <= 120 and log.endswith(tail)
    assert orch.view(name, 0)["bootDiagnostics"] is None  # Healthy: nothing read

    orch.run("vmss", "delete", "--name", name)
    assert libvirt_objects(f"{name}-") == {"domains": [], "volumes": [], "hosts": []}
    gone = orch.run("vmss", "boot-diagnostics", "get-boot-log", "--name", name,
                    "--instance-id", "0", check=False)
    assert gone.returncode == 2 and len(gone.stderr.splitlines()) == 1, gone.stderr


def test_a_broken_image_fails_with_its_console_lines(orch: Orch) -> None:
    name = orch.new_set_name()
    proc = orch.run("vmss", "create", "--name", name, "--image", "tiny:3", "--instance-count", "1",
                    "--health-probe-grace-period", "20", check=False)
    print(proc.stderr)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    assert f"{name}-0 Unhealthy" in lines[at] and "health command exit 1" in lines[at]
    header = re.fullmatch(rf"  {name}-0: last (\d+) console lines:", lines[at + 1])
    assert header, lines[at:]
    shown = lines[at + 2:]
    assert len(shown) == int(header[1]) <= 10 and all(s.startswith("    ") for s in shown)
    assert any(LEASE.search(s) for s in shown), shown  # it booted; its health check failed

    view = orch.view(name, 0)
    assert view["healthState"] == "Unhealthy"
    tail = view["bootDiagnostics"]["consoleTail"]
    assert view["bootDiagnostics"]["error"] is None and 0 < len(tail) <= 10
    assert any(LEASE.search(s) for s in tail), tail

    orch.run("vmss", "delete", "--name", name)
    assert libvirt_objects(f"{name}-") == {"domains": [], "volumes": [], "hosts": []}
