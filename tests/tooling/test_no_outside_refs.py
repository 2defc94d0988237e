"""The project stands on its own: no tracked file cites a document a user's clone does not
have, and every citation of the project's own rules points at a section that exists.

``test_no_outside_documents``: no file tracked by git under ``orchestrator/``, ``tests/``,
``scripts/``, ``bench/``, ``images/``, ``docs/``, nor ``README.md`` or ``Makefile``, mentions
the planning documents of the project's authors (a section sign after their names, their file
names, or a path into the directory beside the repository they lived in). Cite
``docs/semantics.md#<anchor>`` or state the fact instead. This file is checked too: it spells
the patterns in pieces.

``test_semantics_anchors_exist``: every anchor of docs/semantics.md cited in those files is
the anchor of a heading of docs/semantics.md, computed as GitHub does (lower case, spaces to
hyphens, punctuation dropped).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCOPE_DIRS = ("orchestrator/", "tests/", "scripts/", "bench/", "images/", "docs/")
SCOPE_FILES = ("README.md", "Makefile")
# spelt in pieces, so that this file names no outside document itself
_SECTION, _DOC = " \u00a7", ".md"
FORBIDDEN = ("SPEC" + _SECTION, "DESIGN" + _SECTION, "SPEC" + _DOC, "DESIGN" + _DOC,
             "../" + "shared")
SEMANTICS = ROOT / "docs" / "semantics.md"
CITATION = re.compile(r"docs/semantics\.md#([A-Za-z0-9_-]+)")


def tracked_files() -> list[str]:
    """The files git tracks in the checked scope (this file excepted), as posix paths."""
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    paths = [p for p in out.stdout.decode().split("\0") if p]
    return [p for p in paths
            if p.startswith(SCOPE_DIRS) or p in SCOPE_FILES]


def read_text(path: str) -> str | None:
    """The file's text, or None for a binary file (or one removed from the work tree)."""
    try:
        data = (ROOT / path).read_bytes()
    except FileNotFoundError:
        return None
    if b"\0" in data:
        return None
    return data.decode("utf-8", errors="replace")


def mentions(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line of ``text`` that mentions a forbidden pattern."""
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1)
            if any(pattern in line for pattern in FORBIDDEN)]


def outside_references(paths: list[str]) -> list[str]:
    """``path:line: text`` for every line of ``paths`` that mentions a forbidden pattern."""
    found: list[str] = []
    for path in paths:
        text = read_text(path)
        if text is not None:
            found += [f"{path}:{number}: {line}" for number, line in mentions(text)]
    return found


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading's text."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def semantics_anchors() -> set[str]:
    anchors: set[str] = set()
    in_fence = False
    for line in SEMANTICS.read_text().splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and (m := re.match(r"#{1,6} (.+)", line)):
            anchors.add(github_anchor(m.group(1)))
    return anchors


def test_no_outside_documents() -> None:
    paths = tracked_files()
    assert "orchestrator/model.py" in paths and "README.md" in paths  # the scope was found
    found = outside_references(paths)
    assert not found, (
        "references to documents that are not in the repository (cite docs/semantics.md#... "
        "or state the fact):\n" + "\n".join(found))


def test_the_checkers_find_what_they_look_for() -> None:
    for pattern in FORBIDDEN:
        assert mentions(f"first line\n# see {pattern}2 for why\n") == [
            (2, f"# see {pattern}2 for why")], pattern
    assert not mentions("docs/semantics.md#rolling, the spec of a set, ScaleSetSpec, shared\n")
    assert github_anchor("Apply latest model") == "apply-latest-model"
    assert github_anchor("Scale-in") == "scale-in"
    assert github_anchor("MaxSurge") == "maxsurge"
    assert github_anchor("Exit codes (and 130)") == "exit-codes-and-130"


def test_semantics_anchors_exist() -> None:
    anchors = semantics_anchors()
    assert {"rolling", "thresholds", "exit-codes", "crash-safety"} <= anchors, anchors
    missing = []
    for path in tracked_files() + [SEMANTICS.relative_to(ROOT).as_posix()]:
        text = read_text(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            missing += [f"{path}:{number}: #{a}" for a in CITATION.findall(line)
                        if a not in anchors]
    # links inside docs/semantics.md itself: ](#anchor)
    for number, line in enumerate(SEMANTICS.read_text().splitlines(), start=1):
        missing += [f"docs/semantics.md:{number}: #{a}"
                    for a in re.findall(r"\]\(#([A-Za-z0-9_-]+)\)", line) if a not in anchors]
    assert not missing, "citations of sections docs/semantics.md does not have:\n" + "\n".join(
        missing)
