"""Log lines on stderr (--log-format / ORCH_LOG_FORMAT): JSON lines parse and carry the
messages, set and instance; text stays as it was; stdout is untouched by the choice."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator import logs

from .fakecli import FakeCli


def records(err: str) -> list[dict[str, Any]]:
    lines = err.splitlines()
    assert lines, "no log lines"
    parsed = [json.loads(line) for line in lines]
    for rec in parsed:
        assert set(rec) >= {"time", "level", "message"}, rec
        assert rec["time"].endswith("Z") and "T" in rec["time"]
    return parsed


CREATE = ["vmss", "create", "--name", "web", "--image", "tiny:1", "--instance-count", "2",
          "--max-batch-instance-percent", "50", "--max-unhealthy-instance-percent", "20"]


def test_json_lines_carry_messages_set_and_instance(cli: FakeCli) -> None:
    code, out, err = cli.run("--log-format", "json", *CREATE, "-o", "json")
    assert code == 0, err
    assert json.loads(out)["name"] == "web"  # the result on stdout is unchanged
    recs = records(err)
    by_message = {r["message"]: r for r in recs}
    creating = [r for r in recs if r["message"].startswith("web-0: creating (")]
    assert len(creating) == 1
    assert creating[0]["set"] == "web" and creating[0]["instance"] == "web-0"
    assert creating[0]["level"] == "info"
    healthy = [r for r in recs if r["message"].startswith("web-1: Healthy after ")]
    assert healthy and healthy[0]["instance"] == "web-1"
    # the policy warning is a warning, of the set, of no instance
    warning = next(r for m, r in by_message.items() if m.startswith("warning: maxBatch"))
    assert warning["level"] == "warning" and warning["set"] == "web"
    assert "instance" not in warning


def test_environment_variable_and_the_error_line(cli: FakeCli,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_LOG_FORMAT", "json")
    code, out, err = cli.run("vmss", "show", "--name", "nothere")
    assert code == 2 and out == ""
    (rec,) = records(err)
    assert rec == {**rec, "level": "error", "message": "scale set nothere not found",
                   "set": "nothere", "exitCode": 2}
    # a usage error after --log-format json comes out as JSON too
    code, _, err = cli.run("--log-format", "json", "vmss", "list", "-o", "xml")
    (rec,) = records(err)
    assert code == 2 and rec["exitCode"] == 2 and "'xml' is not one of" in rec["message"]


def test_text_is_unchanged(cli: FakeCli) -> None:
    code, _, err = cli.run(*CREATE)
    assert code == 0, err
    lines = err.splitlines()
    assert any("s] web-0: creating (" in line for line in lines), lines
    assert all(line.startswith("[") and "s] " in line[:12] for line in lines), lines
    code, _, err = cli.run("vmss", "show", "--name", "nothere")
    assert code == 2 and err == "error: scale set nothere not found\n"


def test_controller_pass_lines_name_their_set(cli: FakeCli) -> None:
    cli.world.register_image("tiny", "2")
    assert cli.run(*CREATE, "--upgrade-policy-mode", "Automatic")[0] == 0
    assert cli.run("vmss", "update", "--name", "web", "--image", "tiny:2", "--no-wait")[0] == 0
    code, out, err = cli.run("--log-format", "json", "controller", "run", "--once", "-o", "json")
    assert code == 0, err
    assert json.loads(out)["actions"] == ["web: Automatic upgrade of 2 instances"]
    recs = records(err)
    assert {r["message"] for r in recs} >= {"web: Automatic upgrade of 2 instances",
                                            "web-0: applying generation 2 (tiny:2)"}
    assert all(r["set"] == "web" for r in recs), recs
    assert {r.get("instance") for r in recs} >= {"web-0", "web-1"}


@pytest.mark.parametrize("args,env", [
    (["--log-format", "bogus", "vmss", "list"], None),
    (["vmss", "list"], "bogus"),
])
def test_bogus_format_is_bad_input(cli: FakeCli, monkeypatch: pytest.MonkeyPatch,
                                   args: list[str], env: str | None) -> None:
    if env is not None:
        monkeypatch.setenv("ORCH_LOG_FORMAT", env)
    code, out, err = cli.run(*args)
    assert code == 2 and out == ""
    assert err.startswith("error: Invalid value for '--log-format'") and err.count("\n") == 1


def test_fields_of_a_line() -> None:
    logs.set_scope("web-2")  # a set whose name ends in a number
    try:
        assert logs.fields_of("web-2-10: Healthy") == {"set": "web-2", "instance": "web-2-10"}
        assert logs.fields_of("web-2: batch 1") == {"set": "web-2"}
        assert logs.fields_of("web-3: other") == {"set": "web-2"}
        with logs.scope("db"):
            assert logs.fields_of("db-0: creating") == {"set": "db", "instance": "db-0"}
        assert logs.fields_of("x") == {"set": "web-2"}
    finally:
        logs.set_scope(None)
    assert logs.fields_of("web-0: creating") == {}


def test_an_errors_details_follow_its_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Evidence such as failed instances' console lines: below the error line, indented, in
    text; one ``details`` list in JSON. The error line itself stays one line."""
    details = ["web-0: last 2 console lines:", "  [    0.000000] Linux version 6.1",
               "  orch-tiny: boot finished"]
    logs.configure("text", tty=False)
    logs.error("create: 1 of 1 instances not healthy: web-0 Unhealthy", exit_code=1,
               details=details)
    assert capsys.readouterr().err == (
        "error: create: 1 of 1 instances not healthy: web-0 Unhealthy\n"
        "  web-0: last 2 console lines:\n"
        "    [    0.000000] Linux version 6.1\n"
        "    orch-tiny: boot finished\n")
    logs.configure("json")
    logs.error("create: 1 of 1 instances not healthy: web-0 Unhealthy", exit_code=1,
               details=details)
    logs.error("scale set nope not found", exit_code=2)
    first, second = records(capsys.readouterr().err)
    assert first["details"] == details and first["exitCode"] == 1
    assert "details" not in second
    logs.configure("text", tty=False)
