"""Rendering for the command line: tables (rich), JSON, YAML, and progress lines.

Owned here: how data looks on stdout (``render``), and ``ProgressPrinter``, the callable that
hands progress lines of long work to ``logs`` (which owns how they look on stderr). Knows
nothing of the domain.
Called by: cli.app, cli.vmss
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from orchestrator import logs

FORMATS = ("table", "json", "yaml")


def render(data: Any, fmt: str, *, columns: Sequence[tuple[str, str]] | None = None,
           title: str | None = None) -> None:
    """Print ``data`` (a dict or a list of dicts). ``columns``: (key, header) for tables."""
    if fmt == "json":
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    elif fmt == "yaml":
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    else:
        console = Console(soft_wrap=True)
        if isinstance(data, list):
            console.print(_table(data, columns, title))
        else:
            console.print(_kv_table(data, title))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]] | None,
           title: str | None) -> Table:
    if columns is None:
        keys = list(rows[0].keys()) if rows else []
        columns = [(k, k) for k in keys]
    table = Table(title=title, show_lines=False, header_style="bold")
    for _, header in columns:
        table.add_column(header)
    for row in rows:
        table.add_row(*(_cell(row.get(key)) for key, _ in columns))
    return table


def _kv_table(data: dict[str, Any], title: str | None) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in data.items():
        table.add_row(key, _cell(value))
    return table


class ProgressPrinter:
    """The ``Progress`` callable the use cases and the engine get: each line goes to the
    ``orchestrator`` logger (``logs``), which prints it on stderr as text or JSON."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet

    def __call__(self, line: str) -> None:
        if not self.quiet:
            logs.progress(line)
