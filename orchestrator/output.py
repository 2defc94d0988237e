"""Rendering for the command line: tables (rich), JSON, YAML, and progress lines.

Owned here: how data looks on stdout (``render``) and how progress of long work looks on
stderr (``ProgressPrinter``). Called by ``cli`` only; knows nothing of the domain.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

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
    """Progress of long work on stderr: coloured lines with elapsed time on a terminal,
    plain ``[  12.3s] message`` lines otherwise (logs, CI)."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.started = time.monotonic()
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.console = Console(stderr=True, highlight=False) if self.tty else None

    def __call__(self, line: str) -> None:
        if self.quiet:
            return
        elapsed = time.monotonic() - self.started
        if self.console is not None:
            self.console.print(f"[dim]{elapsed:7.1f}s[/dim] {_escape(line)}")
        else:
            sys.stderr.write(f"[{elapsed:7.1f}s] {line}\n")
            sys.stderr.flush()


def _escape(text: str) -> str:
    return text.replace("[", "\\[")
