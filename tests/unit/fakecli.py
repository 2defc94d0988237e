"""The ``orch`` command line against the shared fake world: the CLI's own store, registry,
options and output, with the fake hypervisor, prober and clock in place of libvirt and SSH
(``AppContext.env`` is the one thing replaced)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.cli.app import AppContext
from orchestrator.usecases.session import Env
from tests.world import World


@dataclass
class FakeCli:
    world: World
    capsys: pytest.CaptureFixture[str]

    @property
    def state_dir(self) -> Path:
        return self.world.state_dir

    def run(self, *args: str) -> tuple[int, str, str]:
        """``orch ARGS``: (exit code, stdout, stderr)."""
        self.capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(list(args))
            raise SystemExit(0)
        out, err = self.capsys.readouterr()
        code = exc.value.code
        return (code if isinstance(code, int) else 1), out, err


def install(world: World, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> FakeCli:
    monkeypatch.setenv("ORCH_STATE_DIR", str(world.state_dir))
    # unreachable on purpose: nothing here may reach a real libvirt
    monkeypatch.setenv("ORCH_LIBVIRT_URI", "qemu+unix:///system?socket=/nonexistent/sock")
    for name in ("ORCH_METRICS_FILE", "ORCH_LOG_FORMAT", "ORCH_NETWORK", "ORCH_POOL"):
        monkeypatch.delenv(name, raising=False)

    def env(app: AppContext) -> Env:
        # the CLI's own store connection; the world's pool, as ORCH_POOL would configure it
        return world.env_on(app.store, progress=app.progress)

    monkeypatch.setattr(AppContext, "env", env)
    return FakeCli(world, capsys)

