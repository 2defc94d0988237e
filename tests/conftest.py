"""Fixtures of every test layer on the fake world: the shared fake world (``tests.world``)
and the CLI run against it (``tests.unit.fakecli``; tests/api serves the same world)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.fakecli import FakeCli, install
from tests.world import World, make_world


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


@pytest.fixture
def cli(world: World, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> FakeCli:
    """`orch` run in-process against ``world``."""
    return install(world, monkeypatch, capsys)
