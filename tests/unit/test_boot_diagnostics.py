"""Boot diagnostics on the fake world: `vmss boot-diagnostics get-boot-log`, the console lines
an error about instances that did not become Healthy carries, and the instance view's
``bootDiagnostics`` (docs/semantics.md#boot-diagnostics).

The fake hypervisor begins each started domain's console log in its pool with a few
kernel-like lines (``BOOT_LINES``); ``append_console`` is the guest printing more.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.errors import HypervisorError, OperationFailed
from orchestrator.hypervisor.fake import FakeHypervisor
from orchestrator.model import ScaleSetSpec, validate
from orchestrator.usecases import bootdiag
from tests.world import Upgrades, World

from .fakecli import FakeCli

ROLLING = ["--upgrade-policy-mode", "Rolling", "--max-batch-instance-percent", "34",
           "--max-unhealthy-instance-percent", "34"]
MiB = 1024 * 1024


@pytest.fixture
def cli(cli: FakeCli) -> FakeCli:
    cli.world.register_image("tiny", "2")
    return cli


@pytest.fixture
def reads(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """Every ``read_volume_tail`` of the world's hypervisor: (volume, max_bytes)."""
    seen: list[tuple[str, int]] = []
    original = world.hv.read_volume_tail

    def read(pool: str, name: str, *, max_bytes: int) -> bytes:
        seen.append((name, max_bytes))
        return original(pool, name, max_bytes=max_bytes)

    monkeypatch.setattr(world.hv, "read_volume_tail", read)
    yield seen


def guests_print(hv: FakeHypervisor, monkeypatch: pytest.MonkeyPatch, line: str) -> None:
    """Every guest started from now on prints ``line`` after the kernel's, as it boots."""
    original = hv.start

    def start(name: str) -> None:
        original(name)
        hv.append_console(name, f"{line} ({name})\n")

    monkeypatch.setattr(hv, "start", start)


def create(cli: FakeCli, count: int = 1, *extra: str) -> None:
    code, _, err = cli.run("vmss", "create", "--name", "web", "--image", "tiny:1",
                           "--instance-count", str(count), *extra)
    assert code == 0, err


def error_block(err: str) -> list[str]:
    """The error line and the lines that follow it (its details) of a command's stderr."""
    lines = err.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    return lines[start:]


def break_image(world: World, ref: str) -> None:
    world.prober.broken_images.add(str(world.registry.get(ref).disk))


# --- get-boot-log ------------------------------------------------------------------------------
class TestGetBootLog:
    def test_prints_the_console_of_the_instance(self, cli: FakeCli) -> None:
        create(cli, 2)
        cli.world.hv.append_console("web-1", "orch-tiny: boot finished (3.1 s)\n")
        code, out, err = cli.run("vmss", "boot-diagnostics", "get-boot-log", "--name", "web",
                                 "--instance-id", "1")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].startswith("[    0.000000] Linux version ")
        assert lines[-1] == "orch-tiny: boot finished (3.1 s)"
        code, out, _ = cli.run("vmss", "boot-diagnostics", "get-boot-log", "--name", "web",
                               "--instance-id", "1", "-o", "json")
        data = json.loads(out)
        assert data == {"name": "web-1", "instanceId": 1, "host": "local",
                        "log": "\n".join(lines) + "\n"}

    def test_tail_bytes_bounds_the_read_and_the_log_starts_at_a_line(
            self, cli: FakeCli, reads: list[tuple[str, int]]) -> None:
        create(cli)
        cli.world.hv.append_console("web-0", "".join(f"line {i}\n" for i in range(10_000)))
        code, out, err = cli.run("vmss", "boot-diagnostics", "get-boot-log", "--name", "web",
                                 "--instance-id", "0", "--tail-bytes", "100")
        assert code == 0, err
        assert len(out.encode()) <= 100
        lines = out.splitlines()
        assert lines[-1] == "line 9999" and len(lines) >= 9
        assert lines[0] == f"line {10_000 - len(lines)}"  # whole lines only
        assert reads == [("web-0-console.log", 101)]  # never more than asked (+1: cut?)

    def test_rotated_copies_come_first_oldest_first(self, cli: FakeCli) -> None:
        create(cli)
        hv = cli.world.hv
        hv.upload_volume("default", name="web-0-console.log.1", data=b"oldest\n")
        hv.upload_volume("default", name="web-0-console.log.0", data=b"older\n")
        hv.upload_volume("default", name="web-0-console.log.3", data=b"not a rotation chain\n")
        hv.append_console("web-0", "newest\n")
        code, out, _ = cli.run("vmss", "boot-diagnostics", "get-boot-log", "--name", "web",
                               "--instance-id", "0")
        lines = out.splitlines()
        assert code == 0 and lines[:2] == ["oldest", "older"] and lines[-1] == "newest"
        assert "not a rotation chain" not in out  # no .2: nothing before .1
        code, out, _ = cli.run("vmss", "boot-diagnostics", "get-boot-log", "--name", "web",
                               "--instance-id", "0", "--tail-bytes", "20")
        assert out == "newest\n"  # the bound holds across the copies

    def test_no_log_yet_is_an_empty_log(self, cli: FakeCli) -> None:
        create(cli)
        cli.world.hv.delete_volume("default", "web-0-console.log")  # virtlogd made none yet
        code, out, err = cli.run("vmss", "boot-diagnostics", "get-boot-log", "--name", "web",
                                 "--instance-id", "0")
        assert (code, out) == (0, "") and "web-0: no console output yet" in err
        code, out, _ = cli.run("vmss", "boot-diagnostics", "get-boot-log", "--name", "web",
                               "--instance-id", "0", "-o", "json")
        assert code == 0 and json.loads(out)["log"] == ""

    def test_terminal_controls_of_the_guest_are_not_passed_on(self, cli: FakeCli) -> None:
        create(cli)
        cli.world.hv.append_console("web-0", b"\x1b[1;31mred\x1b[0m\r\n\x07bell\x1b]0;title\x07"
                                             b"\rover\xff\n")
        code, out, _ = cli.run("vmss", "boot-diagnostics", "get-boot-log", "--name", "web",
                               "--instance-id", "0")
        assert code == 0 and out.endswith("red\nbell\nover\ufffd\n")
        assert not any(c in out for c in "\x1b\x07\r")

    @pytest.mark.parametrize(("args", "message"), [
        (("--name", "nope", "--instance-id", "0"), "scale set nope not found"),
        (("--name", "web", "--instance-id", "7"), "scale set web has no instance 7"),
        (("--name", "web", "--instance-id", "0", "--tail-bytes", "0"), "--tail-bytes"),
        (("--name", "Web", "--instance-id", "0"), "Web"),
    ])
    def test_unknown_set_or_instance_and_bad_bounds_exit_2(
            self, cli: FakeCli, args: tuple[str, ...], message: str) -> None:
        create(cli)
        code, out, err = cli.run("vmss", "boot-diagnostics", "get-boot-log", *args)
        assert code == 2 and out == ""
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err

    def test_an_unreachable_host_exits_4_naming_it(self, cli: FakeCli) -> None:
        h1 = cli.world.add_host("h1")
        create(cli)
        inst = cli.world.store.find_instance("web", 0)
        assert inst is not None and inst.host == "h1"
        h1.set_unavailable(True)
        code, out, err = cli.run("vmss", "boot-diagnostics", "get-boot-log", "--name", "web",
                                 "--instance-id", "0")
        assert code == 4 and out == "" and len(err.splitlines()) == 1, err
        assert err.startswith("error: boot log of web-0: its host h1 does not answer (")
        assert "(hint: `orch host list` shows its state)" in err

    def test_an_unreachable_local_libvirt_exits_4_with_its_hint(self, cli: FakeCli) -> None:
        create(cli)
        cli.world.hv.set_unavailable(True)
        code, _, err = cli.run("vmss", "boot-diagnostics", "get-boot-log", "--name", "web",
                               "--instance-id", "0")
        assert code == 4 and len(err.splitlines()) == 1
        assert "its host local does not answer" in err and "orch lab up" in err


# --- the error of a command whose instances did not become Healthy ---------------------------
class TestFailureCarriesConsoleLines:
    def test_create(self, cli: FakeCli, monkeypatch: pytest.MonkeyPatch) -> None:
        guests_print(cli.world.hv, monkeypatch, "httpd: health endpoint failed")
        cli.world.prober.unhealthy.add("web-1")
        code, _, err = cli.run("vmss", "create", "--name", "web", "--image", "tiny:1",
                               "--instance-count", "2")
        assert code == 1
        block = error_block(err)
        assert block[0].startswith("error: create: 1 of 2 instances not healthy: web-1 Unhealthy")
        assert block[1:] == ["  web-1: last 4 console lines:",
                             ("    [    0.000000] Linux version 6.1.0-fake (orchestrator fake "
                              "hypervisor)"),
                             "    [    0.000000] Command line: console=ttyS0 root=/dev/vda rw",
                             "    [    0.731337] Run /init as init process",
                             "    httpd: health endpoint failed (web-1)"]

    def test_the_error_is_one_json_object_with_the_lines(self, cli: FakeCli) -> None:
        cli.world.prober.unhealthy.add("web-0")
        code, _, err = cli.run("--log-format", "json", "vmss", "create", "--name", "web",
                               "--image", "tiny:1", "--instance-count", "1")
        records = [json.loads(line) for line in err.splitlines()]
        error = records[-1]
        assert code == 1 and error["level"] == "error" and error["exitCode"] == 1
        assert "web-0 Unhealthy" in error["message"] and "\n" not in error["message"]
        assert error["details"][0] == "web-0: last 3 console lines:"
        assert error["details"][1].startswith("  [    0.000000] Linux version")

    def test_only_the_last_lines_and_a_bounded_width(self, cli: FakeCli,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     reads: list[tuple[str, int]]) -> None:
        hv = cli.world.hv
        original = hv.start

        def chatty(name: str) -> None:
            original(name)
            hv.append_console(name, "".join(f"noise {i}\n\n" for i in range(5000))
                              + "x" * 5000 + "\n   \n")

        monkeypatch.setattr(hv, "start", chatty)
        cli.world.prober.unhealthy.add("web-0")
        code, _, err = cli.run("vmss", "create", "--name", "web", "--image", "tiny:1",
                               "--instance-count", "1")
        block = error_block(err)
        assert code == 1 and block[1] == "  web-0: last 10 console lines:"
        assert [line.strip() for line in block[2:11]] == [f"noise {i}" for i in range(4991, 5000)]
        assert block[11] == "    " + "x" * (bootdiag.LINE_CHARS - 1) + "…"
        assert len(block) == 12
        assert reads == [("web-0-console.log", bootdiag.TAIL_BYTES + 1)]

    def test_at_most_three_instances_are_shown(self, cli: FakeCli) -> None:
        cli.world.prober.unhealthy.update({f"web-{i}" for i in range(5)})
        code, _, err = cli.run("vmss", "create", "--name", "web", "--image", "tiny:1",
                               "--instance-count", "5")
        block = error_block(err)
        headers = [line for line in block if line.endswith("console lines:")]
        assert code == 1 and headers == [f"  web-{i}: last 3 console lines:" for i in range(3)]
        assert block[-1] == ("  ... and 2 more instances: `orch vmss boot-diagnostics "
                             "get-boot-log` shows each")

    def test_a_log_that_cannot_be_read_is_said_so_and_the_exit_code_stays(
            self, cli: FakeCli) -> None:
        cli.world.prober.unhealthy.add("web-0")
        cli.world.hv.fail_next("read_volume_tail", HypervisorError("download refused"))
        code, _, err = cli.run("vmss", "create", "--name", "web", "--image", "tiny:1",
                               "--instance-count", "1")
        assert code == 1
        assert error_block(err)[1:] == ["  web-0: console log not read: download refused"]

    def test_update_instances(self, cli: FakeCli) -> None:
        create(cli, 2)
        assert cli.run("vmss", "update", "--name", "web", "--image", "tiny:2")[0] == 0
        break_image(cli.world, "tiny:2")
        code, _, err = cli.run("vmss", "update-instances", "--name", "web", "--instance-ids", "1")
        block = error_block(err)
        assert code == 1 and "update-instances: 1 of 1 instances failed: web-1" in block[0]
        assert block[1] == "  web-1: last 3 console lines:"

    def test_reimage(self, cli: FakeCli) -> None:
        create(cli, 2)
        cli.world.prober.unhealthy.add("web-0")
        code, _, err = cli.run("vmss", "reimage", "--name", "web", "--instance-ids", "0")
        block = error_block(err)
        assert code == 1 and "reimage: 1 of 1 instances not healthy: web-0" in block[0]
        assert block[1] == "  web-0: last 3 console lines:"

    def test_a_faulted_rolling_upgrade_in_place(self, cli: FakeCli,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
        create(cli, 3, *ROLLING)
        break_image(cli.world, "tiny:2")
        guests_print(cli.world.hv, monkeypatch, "httpd: health endpoint failed")
        code, _, err = cli.run("vmss", "update", "--name", "web", "--image", "tiny:2")
        block = error_block(err)
        assert code == 1 and block[0].startswith("error: rolling upgrade of web Faulted: ")
        assert block[1] == "  web-0: last 4 console lines:"
        assert block[-1] == "    httpd: health endpoint failed (web-0)"

    def test_a_faulted_surge_shows_the_deleted_replacements_console(
            self, cli: FakeCli, monkeypatch: pytest.MonkeyPatch) -> None:
        create(cli, 3, *ROLLING, "--max-surge", "true")
        break_image(cli.world, "tiny:2")
        guests_print(cli.world.hv, monkeypatch, "httpd: health endpoint failed")
        code, _, err = cli.run("vmss", "update", "--name", "web", "--image", "tiny:2")
        block = error_block(err)
        assert code == 1 and "Faulted" in block[0]
        assert block[1] == "  web-3: last 4 console lines:"  # the replacement of web-0
        assert block[-1] == "    httpd: health endpoint failed (web-3)"
        assert cli.world.store.find_instance("web", 3) is None  # deleted, its log with it
        assert "web-3-console.log" not in {v.name for v in cli.world.hv.list_volumes("default")}

    def test_a_command_shows_only_its_own_failures(self, world: World) -> None:
        """One Env for several commands (the controller's, a test's): each command starts
        with none kept."""
        world.register_image("tiny", "2")
        world.prober.unhealthy.add("web-1")
        with pytest.raises(OperationFailed) as failed:
            world.service.create(validate(ScaleSetSpec, {
                "name": "web", "model": {"image": "tiny:1"}, "capacity": 3,
                "upgradePolicy": {"mode": "Rolling", "rollingUpgradePolicy": {
                    "maxBatchInstancePercent": 34, "maxUnhealthyInstancePercent": 34}}}))
        assert failed.value.details[0] == "web-1: last 3 console lines:"
        world.prober.unhealthy.clear()
        world.service.power("web", [1], "restart")  # Healthy now
        break_image(world, "tiny:2")
        with pytest.raises(OperationFailed, match="Faulted") as faulted:
            Upgrades(world.service).update("web", {"model": {"image": "tiny:2"}})
        headers = [line for line in faulted.value.details if line.endswith(":")]
        assert headers == ["web-0: last 3 console lines:"]


# --- get-instance-view -------------------------------------------------------------------------
class TestInstanceView:
    def view(self, cli: FakeCli, instance_id: int) -> dict[str, Any]:
        code, out, err = cli.run("vmss", "get-instance-view", "--name", "web", "--instance-id",
                                 str(instance_id), "-o", "json")
        assert code == 0, err
        data: dict[str, Any] = json.loads(out)
        return data

    def test_a_healthy_instance_has_none_and_costs_no_download(
            self, cli: FakeCli, reads: list[tuple[str, int]]) -> None:
        create(cli)
        view = self.view(cli, 0)
        assert view["healthState"] == "Healthy" and view["bootDiagnostics"] is None
        assert reads == []

    def test_an_unhealthy_instance_shows_its_last_console_lines(
            self, cli: FakeCli, reads: list[tuple[str, int]]) -> None:
        create(cli, 2)
        cli.world.prober.unhealthy.add("web-1")
        cli.world.hv.append_console("web-1", "".join(f"late {i}\n" for i in range(20)))
        view = self.view(cli, 1)
        assert view["healthState"] == "Unhealthy"
        assert view["bootDiagnostics"] == {
            "consoleTail": [f"late {i}" for i in range(10, 20)], "error": None}
        assert reads == [("web-1-console.log", bootdiag.TAIL_BYTES + 1)]
        code, out, _ = cli.run("vmss", "get-instance-view", "--name", "web", "--instance-id", "1",
                               "-o", "yaml")
        assert code == 0 and "consoleTail:" in out and "- late 19" in out

    def test_a_stopped_instance_shows_its_last_boot(self, cli: FakeCli) -> None:
        create(cli)
        assert cli.run("vmss", "stop", "--name", "web", "--instance-ids", "0")[0] == 0
        view = self.view(cli, 0)
        assert view["healthState"] == "Unknown"
        assert view["bootDiagnostics"]["consoleTail"][-1] == \
            "[    0.731337] Run /init as init process"

    def test_an_unreachable_host_is_said_so_without_waiting_on_it(
            self, cli: FakeCli, reads: list[tuple[str, int]]) -> None:
        h1 = cli.world.add_host("h1")
        create(cli)
        h1.set_unavailable(True)
        view = self.view(cli, 0)
        assert view["powerState"] == "unknown"
        assert view["bootDiagnostics"] == {"consoleTail": [],
                                           "error": "its host h1 does not answer"}
        assert reads == []

    def test_a_log_not_read_is_an_error_in_the_view_not_a_failed_command(
            self, cli: FakeCli) -> None:
        create(cli)
        cli.world.prober.unhealthy.add("web-0")
        cli.world.hv.fail_next("read_volume_tail", HypervisorError("download refused"))
        view = self.view(cli, 0)
        assert view["bootDiagnostics"] == {"consoleTail": [], "error": "download refused"}
