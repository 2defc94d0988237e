"""scripts/nightly_report.py: JUnit XML of a nightly run → the Markdown report.

One test feeds it a JUnit XML written here by hand (exact figures to look for); another has
pytest itself write the XML of a tiny inner suite that records properties the way the nightly
VM tests do, so the report reads what ``record_property`` really produces.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "nightly_report.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nightly_report", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["nightly_report"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


HAND_MADE = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4" time="612.5"
    timestamp="2026-11-28T02:00:00.000000" hostname="nightly-host">
  <testcase classname="tests.vm.test_nightly" name="test_eight_instances" time="420.25">
    <properties>
      <property name="create_wall_seconds" value="81.3456"/>
      <property name="boot_seconds" value="6.5"/>
      <property name="instances" value="8"/>
      <property name="boot_seconds" value="40.04"/>
      <property name="boot_seconds" value="7.25"/>
    </properties>
  </testcase>
  <testcase classname="tests.vm.test_upgrades" name="test_rolling[in-place]" time="150.5">
    <properties><property name="upgrade_wall_seconds" value="60.0"/></properties>
  </testcase>
  <testcase classname="tests.vm.test_faults" name="test_hung_sshd" time="41.75">
    <failure message="AssertionError: took 19.2 s&#10;second line">trace</failure>
  </testcase>
  <testcase classname="tests.vm.test_debian" name="test_debian_12" time="0.01">
    <skipped type="pytest.skip" message="not today">skip</skipped>
  </testcase>
</testsuite></testsuites>
"""


def test_report_of_a_hand_made_junit_xml(tmp_path: Path) -> None:
    report = load_script()
    md = report.render(report.parse(HAND_MADE), source="reports/nightly-junit.xml")

    assert md.startswith("# Nightly report\n")
    assert "2026-11-28T02:00:00" in md and "nightly-host" in md
    assert "**FAILED**: 4 tests, 2 passed, 1 failed, 0 errors, 1 skipped; wall time 612.5 s" in md
    # every test with its outcome and duration, slowest first
    section = md.split("## Tests by duration\n", 1)[1].split("\n## ", 1)[0]
    assert [line for line in section.splitlines() if line.startswith("| `")] == [
        "| `tests.vm.test_nightly::test_eight_instances` | passed | 420.25 |",
        "| `tests.vm.test_upgrades::test_rolling[in-place]` | passed | 150.50 |",
        "| `tests.vm.test_faults::test_hung_sshd` | failed | 41.75 |",
        "| `tests.vm.test_debian::test_debian_12` | skipped | 0.01 |",
    ]
    # recorded properties, per test and summarised
    assert "| `tests.vm.test_nightly::test_eight_instances` | create_wall_seconds | 81.3 |" in md
    assert "| `tests.vm.test_nightly::test_eight_instances` | instances | 8 |" in md
    assert "| `tests.vm.test_upgrades::test_rolling[in-place]` | upgrade_wall_seconds | 60.0 |" in md
    # a figure recorded several times in one test (a boot per instance) is summarised there,
    # and over all tests
    assert ("| `tests.vm.test_nightly::test_eight_instances` | boot_seconds | "
            "3 values: min 6.5, median 7.2, max 40.0 |") in md
    assert "| boot_seconds | 3 | 6.5 | 7.2 | 40.0 |" in md
    assert "| upgrade_wall_seconds | 1 | 60.0 | 60.0 | 60.0 |" in md
    # the first line of a failure's message
    assert ("- `tests.vm.test_faults::test_hung_sshd` (failed): AssertionError: took 19.2 s"
            in md.splitlines())


def test_cli_writes_the_report_and_refuses_a_missing_file(tmp_path: Path) -> None:
    xml = tmp_path / "junit.xml"
    xml.write_text(HAND_MADE)
    out = tmp_path / "reports" / "nightly.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(xml), "-o", str(out)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "test_eight_instances" in out.read_text()

    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "missing.xml")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "cannot read" in proc.stderr


def test_report_reads_what_record_property_writes(tmp_path: Path) -> None:
    """An inner pytest run with --junitxml, as `make nightly` does it."""
    (tmp_path / "test_inner.py").write_text(textwrap.dedent("""
        import pytest

        def test_boots(record_property):
            record_property("boot_seconds", 6.54)
            record_property("upgrade_wall_seconds", 123.0)

        @pytest.mark.parametrize("n", [2])
        def test_fails(record_property, n):
            record_property("instances", n)
            assert n == 3, "two is not three"
    """))
    xml = tmp_path / "inner-junit.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), f"--junitxml={xml}", "test_inner.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one test fails on purpose

    report = load_script()
    md = report.render(report.parse(xml.read_text()))
    assert "**FAILED**: 2 tests, 1 passed, 1 failed, 0 errors, 0 skipped" in md
    assert "| `test_inner::test_boots` | boot_seconds | 6.5 |" in md
    assert "| `test_inner::test_boots` | upgrade_wall_seconds | 123.0 |" in md
    assert "| `test_inner::test_fails[2]` | instances | 2 |" in md
    assert "- `test_inner::test_fails[2]` (failed): AssertionError: two is not three" in md
    assert "| `test_inner::test_boots` | passed |" in md


def test_boot_times_come_from_the_progress_lines() -> None:
    """The VM tests' ``boot_seconds`` figures: one per instance that became Healthy, read from
    the progress lines of the command (helpers in tests/vm/conftest.py)."""
    from tests.vm.conftest import healthy_after, record_boots

    lines = ["[    0.1s] web-0: creating (10.213.0.2, tiny:1)",
             "[    7.0s] web-0: Healthy after 6.5s",
             "[    7.2s] web-2-0: Healthy after 3.0s",  # another set whose name starts with web-
             "[    9.9s] web-11: Unhealthy after 9.5s",  # not a boot to Healthy
             "[   12.0s] web-11: Healthy after 11.75s",
             "[   12.1s] web: rolling upgrade Completed"]
    stderr = "\n".join(lines)
    assert healthy_after(stderr, "web") == {0: 6.5, 11: 11.75}
    recorded: list[tuple[str, object]] = []
    assert record_boots(lambda name, value: recorded.append((name, value)), stderr, "web") \
        == {0: 6.5, 11: 11.75}
    assert recorded == [("boot_seconds", 6.5), ("boot_seconds", 11.75)]
