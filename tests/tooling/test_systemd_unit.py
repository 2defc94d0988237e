"""The systemd unit in config/systemd starts `orch serve` with flags the command accepts, stops
it with SIGTERM and gives it longer to stop than the operations' stop timeout."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

from orchestrator.cli import cli

UNIT = Path(__file__).parents[2] / "config" / "systemd" / "orch-serve.service"


def test_the_unit_runs_orch_serve_with_valid_flags_and_stops_it_in_time() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(UNIT)
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/.venv/bin/orch") and argv[1] == "serve", argv
    # the flags parse as `orch serve` parses them (nothing is run)
    ctx = cli.commands["serve"].make_context("serve", argv[2:])
    assert ctx.params["listen"] == "127.0.0.1:8717"
    assert service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) > ctx.params["stop_timeout"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
