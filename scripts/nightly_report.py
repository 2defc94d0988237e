#!/usr/bin/env python3
"""Turns the JUnit XML of a nightly run into a short Markdown report.

Called by ``make nightly`` after pytest (``reports/nightly-junit.xml`` →
``reports/nightly.md``), also when tests failed; tested by
``tests/unit/test_nightly_report.py``. Standard library only, so it runs with any Python 3.11.

The report holds the totals, every test with its outcome and duration (slowest first), the
figures tests recorded with pytest's ``record_property`` (``boot_seconds``,
``upgrade_wall_seconds`` ...; they are ``<property>`` elements of a ``<testcase>``), a summary
of each numeric figure over all tests (count, min, median, max), and the first line of each
failure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

OUTCOMES = ("passed", "failed", "error", "skipped")
LABELS = {"passed": "passed", "failed": "failed", "error": "errors", "skipped": "skipped"}


@dataclass(frozen=True)
class Case:
    """One ``<testcase>``: its id, outcome, duration and recorded properties (in order)."""

    test_id: str
    outcome: str
    seconds: float
    properties: list[tuple[str, str]] = field(default_factory=list)
    message: str = ""


@dataclass(frozen=True)
class Run:
    cases: list[Case]
    wall_seconds: float | None
    timestamp: str
    hostname: str


def parse(xml_text: str) -> Run:
    """Reads a JUnit XML document (a ``<testsuites>`` or a single ``<testsuite>``)."""
    root = ET.fromstring(xml_text)
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    cases: list[Case] = []
    wall: float | None = None
    timestamp = hostname = ""
    for suite in suites:
        if suite.get("time"):
            wall = (wall or 0.0) + float(suite.get("time", "0"))
        timestamp = timestamp or suite.get("timestamp", "")
        hostname = hostname or suite.get("hostname", "")
        for tc in suite.iter("testcase"):
            cases.append(_case(tc))
    return Run(cases, wall, timestamp, hostname)


def _case(tc: ET.Element) -> Case:
    classname, name = tc.get("classname", ""), tc.get("name", "")
    test_id = f"{classname}::{name}" if classname else name
    outcome, message = "passed", ""
    for tag in ("failure", "error", "skipped"):
        found = tc.find(tag)
        if found is not None:
            outcome = "failed" if tag == "failure" else tag
            message = found.get("message") or (found.text or "")
            break
    props = [(p.get("name", ""), p.get("value", "")) for p in tc.iterfind("properties/property")]
    return Case(test_id, outcome, float(tc.get("time") or 0.0), props,
                message.strip().splitlines()[0] if message.strip() else "")


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _fmt(value: str) -> str:
    num = _number(value)
    if num is None or value.strip().lstrip("-").isdigit():
        return value
    return f"{num:.1f}"


def _grouped(properties: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Values by figure name, names in the order first recorded (a figure recorded once per
    instance, e.g. ``boot_seconds``, repeats)."""
    grouped: dict[str, list[str]] = {}
    for name, value in properties:
        grouped.setdefault(name, []).append(value)
    return grouped


def _values(values: list[str]) -> str:
    """One value as recorded; several numbers as count, min, median and max."""
    if len(values) == 1:
        return _fmt(values[0])
    nums = [n for n in map(_number, values) if n is not None]
    if len(nums) < len(values):
        return ", ".join(values)
    return (f"{len(nums)} values: min {min(nums):.1f}, median {statistics.median(nums):.1f}, "
            f"max {max(nums):.1f}")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(run: Run, *, source: str = "") -> str:
    """The Markdown report of ``run``."""
    counts = {o: sum(1 for c in run.cases if c.outcome == o) for o in OUTCOMES}
    total_test_seconds = sum(c.seconds for c in run.cases)
    lines = ["# Nightly report", ""]
    about = [f"from `{source}`" if source else "", run.timestamp and f"started {run.timestamp}",
             run.hostname and f"on {run.hostname}"]
    if any(about):
        lines += [", ".join(a for a in about if a), ""]
    verdict = "PASSED" if counts["failed"] == counts["error"] == 0 else "FAILED"
    wall = f"{run.wall_seconds:.1f} s" if run.wall_seconds is not None else "unknown"
    lines += [f"**{verdict}**: {len(run.cases)} tests, " + ", ".join(
        f"{counts[o]} {LABELS[o]}" for o in OUTCOMES) + f"; wall time {wall}, "
        f"sum of test durations {total_test_seconds:.1f} s", ""]

    lines += ["## Tests by duration", "", "| Test | Outcome | Seconds |", "|---|---|---:|"]
    for c in sorted(run.cases, key=lambda c: (-c.seconds, c.test_id)):
        lines.append(f"| `{_cell(c.test_id)}` | {c.outcome} | {c.seconds:.2f} |")
    lines.append("")

    recorded = [(c, name, value) for c in run.cases for name, value in c.properties]
    lines += ["## Recorded figures", ""]
    if not recorded:
        lines += ["No test recorded a figure (pytest's `record_property`).", ""]
    else:
        lines += ["| Test | Figure | Value |", "|---|---|---:|"]
        for c in run.cases:
            for name, values in _grouped(c.properties).items():
                lines.append(f"| `{_cell(c.test_id)}` | {_cell(name)} | "
                             f"{_cell(_values(values))} |")
        lines.append("")
        by_name: dict[str, list[float]] = {}
        for _, name, value in recorded:
            num = _number(value)
            if num is not None:
                by_name.setdefault(name, []).append(num)
        if by_name:
            lines += ["### Figures over all tests", "",
                      "| Figure | Count | Min | Median | Max |", "|---|---:|---:|---:|---:|"]
            for name in sorted(by_name):
                vals = by_name[name]
                lines.append(f"| {_cell(name)} | {len(vals)} | {min(vals):.1f} | "
                             f"{statistics.median(vals):.1f} | {max(vals):.1f} |")
            lines.append("")

    problems = [c for c in run.cases if c.outcome in ("failed", "error")]
    if problems:
        lines += ["## Failures", ""]
        lines += [f"- `{_cell(c.test_id)}` ({c.outcome}): {_cell(c.message) or 'no message'}"
                  for c in problems]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("junit_xml", type=Path, help="JUnit XML written by pytest --junitxml")
    parser.add_argument("-o", "--output", type=Path, help="Markdown file (default: stdout)")
    args = parser.parse_args(argv)
    try:
        run = parse(args.junit_xml.read_text())
    except (OSError, ET.ParseError) as exc:
        print(f"nightly_report: cannot read {args.junit_xml}: {exc}", file=sys.stderr)
        return 2
    text = render(run, source=str(args.junit_xml))
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
