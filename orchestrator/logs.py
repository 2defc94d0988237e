"""Log lines on stderr: progress of long work, warnings and the final error, as text or as
JSON lines (``--log-format {text,json}``, env ``ORCH_LOG_FORMAT``).

Owned here: the ``orchestrator`` logger's one handler and its two formats (``configure``),
the scale set a command or a reconcile pass works on (``scope``), and how a progress line
becomes a log record (``progress``): ``warning: ...`` and ``problem: ...`` lines are
warnings, the rest info; ``set`` comes from the scope and ``instance`` from a leading
``<set>-<instanceId>:``. Text is what ``orch`` always printed (a coloured line with the
elapsed time on a terminal, ``[  12.3s] message`` otherwise); JSON is one object per line
with ``time``, ``level``, ``message`` and, where known, ``set``, ``instance``, ``exitCode``
(and an error's ``details``).

Called by: api.operations, api.serve, cli.app, cli.hosts, cli.images, cli.vmss, output,
usecases.controller
``cli.app`` calls ``configure`` from the global option and writes the error line of ``main``,
``output.ProgressPrinter`` passes every progress line, ``cli.vmss`` and ``usecases.controller`` set the
``scope``.
What goes to stdout (tables, JSON, YAML results) never passes through here.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import json
import logging
import re
import sys
import time
from collections.abc import Iterator, Sequence

from rich.console import Console

LOG_FORMATS = ("text", "json")
LOGGER_NAME = "orchestrator"

_logger = logging.getLogger(LOGGER_NAME)
_state: dict[str, str | None] = {"format": "text"}
# the set of the work running in this thread or task: `orch serve` runs several at once
_set: contextvars.ContextVar[str | None] = contextvars.ContextVar("orch_log_set", default=None)
_INSTANCE_PREFIX = re.compile(r"^(?P<instance>[a-z][a-z0-9-]{0,39}-\d+):")


class _StderrHandler(logging.Handler):
    """Writes each record to the ``sys.stderr`` of the moment (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


class _RichStderrHandler(logging.Handler):
    """On a terminal: the dimmed elapsed time, then the message (rich markup escaped)."""

    def __init__(self, started: float) -> None:
        super().__init__()
        self.started = started
        self.console = Console(stderr=True, highlight=False)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            elapsed = time.monotonic() - self.started
            text = record.getMessage().replace("[", "\\[")
            self.console.print(f"[dim]{elapsed:7.1f}s[/dim] {text}")
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


class TextFormatter(logging.Formatter):
    """``[  12.3s] message``: seconds since ``configure``."""

    def __init__(self, started: float) -> None:
        super().__init__()
        self.started = started

    def format(self, record: logging.LogRecord) -> str:
        return f"[{time.monotonic() - self.started:7.1f}s] {record.getMessage()}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ms), level, message, then set, instance and
    exitCode when the record carries them."""

    EXTRA_KEYS = ("set", "instance", "exitCode", "details")

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": _dt.datetime.fromtimestamp(record.created, tz=_dt.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        for key in self.EXTRA_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                data[key] = value
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def configure(fmt: str, *, tty: bool | None = None) -> None:
    """(Re)install the one handler of the ``orchestrator`` logger; ``fmt`` is ``text`` or
    ``json``. ``tty`` overrides whether stderr is a terminal (for tests)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}")
    started = time.monotonic()
    is_tty = sys.stderr.isatty() if tty is None else tty
    handler: logging.Handler
    if fmt == "json":
        handler = _StderrHandler()
        handler.setFormatter(JsonFormatter())
    elif is_tty:
        handler = _RichStderrHandler(started)
    else:
        handler = _StderrHandler()
        handler.setFormatter(TextFormatter(started))
    for old in list(_logger.handlers):
        _logger.removeHandler(old)
    _logger.addHandler(handler)
    _logger.setLevel(logging.INFO)
    _logger.propagate = False
    _state["format"] = fmt


def current_format() -> str:
    return _state["format"] or "text"


def set_scope(set_name: str | None) -> None:
    """The scale set the rest of this command works on (its ``--name``)."""
    _set.set(set_name)


@contextlib.contextmanager
def scope(set_name: str) -> Iterator[None]:
    """Records logged inside carry ``set``: one set of a pass or of a multi-set file."""
    token = _set.set(set_name)
    try:
        yield
    finally:
        _set.reset(token)


def fields_of(line: str) -> dict[str, str]:
    """``set`` and ``instance`` of a progress line, as far as they are known."""
    fields: dict[str, str] = {}
    set_name = _set.get()
    if set_name is not None:
        fields["set"] = set_name
        match = _INSTANCE_PREFIX.match(line)
        if match and re.fullmatch(re.escape(set_name) + r"-\d+", match["instance"]):
            fields["instance"] = match["instance"]
    return fields


def progress(line: str) -> None:
    """One progress line (see the module docstring for its level and fields)."""
    if not _logger.handlers:
        configure(current_format())
    level = logging.WARNING if line.startswith(("warning: ", "problem: ")) else logging.INFO
    _logger.log(level, line, extra=fields_of(line))


def warning(line: str) -> None:
    """A warning of orch itself, e.g. the metrics file could not be written."""
    progress(line if line.startswith("warning: ") else f"warning: {line}")


def error(message: str, *, exit_code: int, details: Sequence[str] = ()) -> None:
    """The one error line a failed command ends with, then its ``details`` (the console
    lines of failed instances), each indented on a line of its own; in JSON, one object
    whose ``details`` is the list of those lines."""
    if not _logger.handlers:
        configure(current_format())
    if current_format() == "json":
        extra: dict[str, object] = {**fields_of(message), "exitCode": exit_code}
        if details:
            extra["details"] = list(details)
        _logger.error(message, extra=extra)
    else:
        sys.stderr.write(f"error: {message}\n" + "".join(f"  {line}\n" for line in details))
        sys.stderr.flush()


def log_traceback(exc: BaseException) -> None:
    """With ``-v``: the traceback of an internal error, as one record (JSON format)."""
    _logger.error("traceback of %s", type(exc).__name__,
                  exc_info=(type(exc), exc, exc.__traceback__), extra=fields_of(""))
