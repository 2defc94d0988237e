"""Every `orch` command the README and docs/semantics.md show exists, with the options it is
shown with.

Reads each document's indented command lines and its inline code spans (``orch ...``,
``.venv/bin/orch ...``, also after ``orch lab exec --``), walks the click command tree from
``orchestrator.cli.cli`` and checks each subcommand name and each ``--option``; continuation
lines (ending in a backslash) are joined. Synopsis lines (``create | apply``,
``[--instance-ids I ...]``) are skipped.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click

from orchestrator.cli import cli

README = Path(__file__).resolve().parents[2] / "README.md"
SEMANTICS = README.parent / "docs" / "semantics.md"
ORCH = re.compile(r"(?:^|\s)(?:\.venv/bin/)?orch(?=\s)")


def documented_commands(document: Path = README) -> list[str]:
    """The ``orch ...`` invocations of a document's indented blocks and code spans, one per
    command; fenced blocks (``` ... ```, YAML examples) are left out."""
    lines = _without_fences(document.read_text().splitlines())
    found: list[str] = []
    joined = ""
    for line in lines:
        if not line.startswith("    "):
            joined = ""
            continue
        text = joined + " " + line.strip() if joined else line.strip()
        if text.endswith("\\"):
            joined = text[:-1]
            continue
        joined = ""
        text = text.split("  #")[0]  # a comment after the command
        starts = [m.end() for m in ORCH.finditer(text)]
        if not starts:
            continue
        tail = text[starts[-1]:].strip()  # the innermost orch (after `orch lab exec --`)
        if "|" in tail or "[" in tail or "..." in tail:
            continue  # a synopsis, not a command
        found.append(tail)
    prose = " ".join(line for line in lines if not line.startswith("    "))
    for span in re.findall(r"`([^`]+)`", prose):
        starts = [m.end() for m in ORCH.finditer(" " + span + " ")]
        if starts and not any(c in span for c in "|[") and "..." not in span:
            found.append((" " + span + " ")[starts[-1]:].strip())
    return found


def _without_fences(lines: list[str]) -> list[str]:
    kept: list[str] = []
    fenced = False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            kept.append(line)
    return kept


def check(argv: list[str]) -> list[str]:
    """Problems of one invocation: unknown subcommands or options. A group named alone (a
    reference such as `orch vmss`) is fine; a word after a group must be one of its commands."""
    problems: list[str] = []
    command: click.Command = cli
    path = ["orch"]
    takes_value: dict[str, bool] = {"--help": False, "-h": False}

    def learn(cmd: click.Command) -> None:
        for param in cmd.params:
            if isinstance(param, click.Option):
                for opt in param.opts:
                    takes_value[opt] = not (param.is_flag or param.count)

    learn(cli)
    args = iter(argv)
    for arg in args:
        if arg == "--":
            break
        if arg.startswith("-"):
            name = arg.split("=")[0]
            if name not in takes_value:
                problems.append(f"{' '.join(path)}: no option {name}")
            elif takes_value[name] and "=" not in arg:
                next(args, None)
            continue
        if isinstance(command, click.Group):
            sub = command.commands.get(arg)
            if sub is None:
                problems.append(f"{' '.join(path)}: no command {arg}")
                break
            command = sub
            path.append(arg)
            learn(command)
    return problems


def test_readme_shows_orch_commands() -> None:
    commands = documented_commands()
    assert len(commands) > 40, commands  # the parser found the README's examples
    assert any(c.startswith("vmss rolling-upgrade start") for c in commands)


def test_every_documented_command_and_option_exists() -> None:
    problems = [f"`orch {c}`: {p}" for c in documented_commands()
                for p in check(shlex.split(c, comments=True))]
    assert not problems, "\n".join(problems)


def test_every_command_of_the_semantics_exists() -> None:
    commands = documented_commands(SEMANTICS)
    assert any(c.startswith("vmss rolling-upgrade cancel") for c in commands), commands
    problems = [f"`orch {c}`: {p}" for c in commands
                for p in check(shlex.split(c, comments=True))]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_unknown_commands_and_options() -> None:
    assert check(shlex.split("vmss update --name web --no-such-flag 1"))
    assert check(shlex.split("vmss rolling-upgrade restart --name web"))
    assert check(shlex.split("vmss updat --name web"))
    assert check(shlex.split("--domain-type kvm vmss crate --name web"))
    assert not check(shlex.split("--domain-type kvm vmss create --name web --image tiny:1"))
