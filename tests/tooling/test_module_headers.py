"""Every module of the ``orchestrator`` package says in its docstring who calls it, and says it
truly.

Each module docstring holds one line starting ``Called by:``. What follows is either

- a comma-separated list of the package's modules that import it, as dotted names relative to
  the package (``Called by: cli.vmss, upgrades``), which may end with a remark in parentheses
  (``Called by: cli.app (the ``orch`` command)``), not checked; or
- free text in parentheses, optionally after ``nobody inside the package``, for a module no
  module of the package imports (``Called by: nobody inside the package (console script)``,
  ``Called by: (tests only)``).

The line goes on over the next lines while it ends with a comma or a parenthesis is open.

The test parses every ``orchestrator/**/*.py`` with ``ast`` and computes, for each module,
which package modules import it: ``import orchestrator.x.y``, ``from orchestrator.x import
y`` (a submodule ``y`` counts as importing ``x.y``, any other name as importing ``x``: a
package's ``__init__`` re-exports count as the package), relative imports, and imports inside
functions alike. A module importing itself does not count. The ``Called by:`` list must equal
that set: every importer named, no name that does not import it. Empty package
``__init__.py`` files are exempt.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "orchestrator"
ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = ROOT / PACKAGE
NAME = r"[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*"
NOBODY = re.compile(r"(?:nobody inside the package\s*)?\(.+\)\.?", re.DOTALL)
NAMES = re.compile(rf"({NAME}(?:\s*,\s*{NAME})*)\s*(?:\(.*\))?\.?", re.DOTALL)


@dataclass(frozen=True)
class Module:
    name: str  # dotted, relative to the package ("" for the package itself)
    path: Path
    is_package: bool  # an __init__.py

    @property
    def shown(self) -> str:
        return self.name or PACKAGE


def module_name(path: Path, package_dir: Path = PACKAGE_DIR) -> str:
    parts = list(path.relative_to(package_dir).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package_dir: Path = PACKAGE_DIR) -> dict[str, Module]:
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        name = module_name(path, package_dir)
        found[name] = Module(name, path, path.name == "__init__.py")
    return found


def _relative(dotted: str) -> str | None:
    """``orchestrator.x.y`` → ``x.y``, ``orchestrator`` → ``""``; None outside the package."""
    if dotted == PACKAGE:
        return ""
    if dotted.startswith(PACKAGE + "."):
        return dotted[len(PACKAGE) + 1:]
    return None


def _join(base: str, name: str) -> str:
    return f"{base}.{name}" if base else name


def imported_by(module: Module, known: dict[str, Module]) -> set[str]:
    """The package modules ``module`` imports (relative dotted names)."""
    tree = ast.parse(module.path.read_text(), filename=str(module.path))
    # the package a relative import starts from
    here = module.name if module.is_package else module.name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                rel = _relative(alias.name)
                if rel is not None:
                    targets.add(rel)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = here.split(".") if here else []
                up = node.level - 1
                if up > len(parts):
                    continue  # beyond the package: not ours
                base_parts = parts[:len(parts) - up]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                if node.module is None:
                    continue
                rel = _relative(node.module)
                if rel is None:
                    continue
                base = rel
            for alias in node.names:
                sub = _join(base, alias.name)
                targets.add(sub if sub in known else base)
    targets.discard(module.name)
    return {t for t in targets if t in known}


def importers(known: dict[str, Module]) -> dict[str, set[str]]:
    """For each module, the package modules that import it."""
    result: dict[str, set[str]] = {name: set() for name in known}
    for module in known.values():
        for target in imported_by(module, known):
            result[target].add(module.name)
    return result


def called_by(docstring: str) -> tuple[set[str] | None, str | None]:
    """The names of a docstring's ``Called by:`` line (an empty set for the free-text form),
    or None and the reason it cannot be read."""
    lines = docstring.splitlines()
    starts = [n for n, line in enumerate(lines) if line.startswith("Called by:")]
    if not starts:
        return None, "no line starting `Called by:`"
    if len(starts) > 1:
        return None, "more than one `Called by:` line"
    n = starts[0]
    text = lines[n].removeprefix("Called by:").strip()
    while (text.endswith(",") or text.count("(") > text.count(")")) and n + 1 < len(lines):
        n += 1
        text += " " + lines[n].strip()
    if NOBODY.fullmatch(text):
        return set(), None
    m = NAMES.fullmatch(text)
    if not m:
        return None, f"`Called by: {text}` is neither a list of modules nor `(free text)`"
    return {name.strip() for name in m.group(1).split(",")}, None


def exempt(module: Module) -> bool:
    return module.is_package and not module.path.read_text().strip()


def mismatches(package_dir: Path = PACKAGE_DIR) -> list[str]:
    known = modules(package_dir)
    actual = importers(known)
    problems: list[str] = []
    for name, module in sorted(known.items()):
        if exempt(module):
            continue
        where = module.path.relative_to(package_dir.parent).as_posix()
        doc = ast.get_docstring(ast.parse(module.path.read_text()), clean=True)
        if doc is None:
            problems.append(f"{where}: no module docstring")
            continue
        listed, why = called_by(doc)
        if listed is None:
            want = ", ".join(sorted(actual[name])) or "(...)"
            problems.append(f"{where}: {why}; expected `Called by: {want}`")
            continue
        missing = actual[name] - listed
        extra = listed - actual[name]
        if missing or extra:
            text = []
            if missing:
                text.append(f"imported by {', '.join(sorted(missing))} but not named")
            if extra:
                unknown = sorted(extra - known.keys())
                wrong = sorted(extra & known.keys())
                if wrong:
                    text.append(f"names {', '.join(wrong)}, which do not import it")
                if unknown:
                    text.append(f"names {', '.join(unknown)}, which are not modules")
            want = ", ".join(sorted(actual[name])) or "(...)"
            problems.append(f"{where}: {'; '.join(text)} (expected `Called by: {want}`)")
    return problems


def test_every_module_names_its_importers() -> None:
    problems = mismatches()
    assert not problems, "module docstrings whose `Called by:` is wrong:\n" + "\n".join(problems)


# --- the checker itself, on a package made for it -------------------------------------------
def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / PACKAGE
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_import_graph(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "import os\nimport orchestrator.b\nfrom orchestrator.sub import c\n",
        "b.py": "def f():\n    from .sub.c import X\n    from orchestrator import a\n",
        "sub/__init__.py": "from .c import X\nfrom . import d\n",
        "sub/c.py": "from .. import b\nfrom ..sub import X\n",
        "sub/d.py": "from orchestrator.sub import X\nfrom . import d\n",
    })
    known = modules(root)
    assert set(known) == {"", "a", "b", "sub", "sub.c", "sub.d"}
    assert importers(known) == {
        "": set(), "a": {"b"}, "b": {"a", "sub.c"}, "sub": {"sub.c", "sub.d"},
        "sub.c": {"a", "b", "sub"}, "sub.d": {"sub"},
    }


def test_the_called_by_line() -> None:
    assert called_by("What it owns.\n\nCalled by: cli.vmss, upgrades\n") == (
        {"cli.vmss", "upgrades"}, None)
    assert called_by("Called by: a, b,\nc.d (and the tests)\n") == ({"a", "b", "c.d"}, None)
    assert called_by("Called by: a (a remark that goes\non; and on)\nMore text.") == ({"a"}, None)
    assert called_by("Called by: (free text\nover two lines)") == (set(), None)
    assert called_by("Called by: nobody inside the package (console script)") == (set(), None)
    assert called_by("Called by: (tests only)") == (set(), None)
    assert called_by("Owned here: x.")[0] is None
    assert called_by("Called by: ``cli`` and ``service``")[0] is None
    assert called_by("Called by: a\nCalled by: b")[0] is None


def test_mismatches_are_reported_readably(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "",
        "a.py": '"""A.\n\nCalled by: b, c, nowhere\n"""\n',
        "b.py": '"""B.\n\nCalled by: (tests only)\n"""\nfrom orchestrator import a\n',
        "c.py": '"""C, without the line."""\nfrom orchestrator import b\n',
        "d.py": "from orchestrator import c\n",
    })
    assert mismatches(root) == [
        ("orchestrator/a.py: names c, which do not import it; names nowhere, which are not "
         "modules (expected `Called by: b`)"),
        "orchestrator/b.py: imported by c but not named (expected `Called by: c`)",
        "orchestrator/c.py: no line starting `Called by:`; expected `Called by: d`",
        "orchestrator/d.py: no module docstring",
    ]
