"""Figures about a package's structure, read from its source with ast (nothing is imported).

    .venv/bin/python bench/structure.py [PACKAGE_DIR] [--top N] [--json]

(a) the 5 largest classes; (b) "A touches N members of B (M uses)": the distinct <member>s of
``self.<x>.<member>`` and ``<name>.<member>`` in module A's functions, where <x> or <name> is
annotated or assigned with a class of module B (class-body annotations such as dataclass fields,
properties' return types, ``self.x = ...``, parameters, locals); (c) ``asyncio.run(`` calls per
module; (d) the largest modules. Chains (``self.a.b.c``) and containers (``list[T]``) are not
followed.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
Function = ast.FunctionDef | ast.AsyncFunctionDef


def load(package: Path) -> dict[str, tuple[ast.Module, int, bool]]:
    """Dotted module name -> (tree, lines, is a package's __init__)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        init = parts[-1] == "__init__"
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, str(path))
        modules[".".join(parts[:-1] if init else parts)] = (tree, len(text.splitlines()), init)
    return modules


def largest_classes(modules: dict[str, tuple[ast.Module, int, bool]]) -> list[dict[str, Any]]:
    found = [{"module": name, "name": c.name,
              "lines": (c.end_lineno or c.lineno) - min([c.lineno, *(d.lineno for d in c.decorator_list)]) + 1,
              "methods": sum(isinstance(n, FUNCTIONS) for n in c.body)}
             for name, (tree, _, _) in modules.items() for c in ast.walk(tree) if isinstance(c, ast.ClassDef)]
    return sorted(found, key=lambda c: (-c["lines"], c["module"], c["name"]))


def asyncio_runs(tree: ast.Module) -> int:
    mods = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
            if a.name == "asyncio"}
    runs = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
            and n.module == "asyncio" and not n.level for a in n.names if a.name == "run"}
    return sum(isinstance(n, ast.Call) and (
        isinstance(f := n.func, ast.Name) and f.id in runs
        or isinstance(f, ast.Attribute) and f.attr == "run" and isinstance(f.value, ast.Name) and f.value.id in mods)
        for n in ast.walk(tree))


class Coupling:
    def __init__(self, modules: dict[str, tuple[ast.Module, int, bool]]) -> None:
        self.modules = modules
        self.owners: dict[str, list[str]] = defaultdict(list)  # class name -> modules defining it
        for name, (tree, _, _) in modules.items():
            for c in tree.body:
                if isinstance(c, ast.ClassDef):
                    self.owners[c.name].append(name)
        self.uses: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        # of the module being scanned: its name, its local names of classes and of modules
        self.module = ""
        self.classes: dict[str, str] = {}  # local name -> module defining the class
        self.aliases: dict[str, str] = {}  # local name -> module of the package

    def owner(self, cls: str, module: str) -> str | None:
        """Module defining ``cls`` as imported from ``module`` (itself, or a unique re-export)."""
        owners = self.owners.get(cls, [])
        return module if module in owners else owners[0] if len(owners) == 1 else None

    def scan(self, name: str) -> None:
        tree, _, init = self.modules[name]
        self.module, self.aliases = name, {}
        self.classes = {c: name for c, owners in self.owners.items() if name in owners}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                self.aliases |= {a.asname: a.name for a in node.names if a.asname and a.name in self.modules}
            elif isinstance(node, ast.ImportFrom):
                base = name.split(".")[: None if init else -1][: None if node.level < 2 else 1 - node.level]
                source = ".".join((base if node.level else []) + ([node.module] if node.module else []))
                for a in node.names:
                    if f"{source}.{a.name}" in self.modules:
                        self.aliases[a.asname or a.name] = f"{source}.{a.name}"
                    elif owner := self.owner(a.name, source):
                        self.classes[a.asname or a.name] = owner
        self.visit(tree.body, {})

    def type_of(self, node: ast.expr | None) -> str | None:
        """Module of the class an annotation names: T, T | None, Optional[T], "T", mod.T."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                node = ast.parse(node.value, mode="eval").body
            except SyntaxError:
                return None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return self.type_of(node.left) or self.type_of(node.right)
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "Optional":
            return self.type_of(node.slice)
        if isinstance(node, ast.Name):
            return self.classes.get(node.id)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in self.aliases:
            return self.owner(node.attr, self.aliases[node.value.id])
        return None

    def typed(self, fn: Function, scope: dict[str, str]) -> list[tuple[ast.expr, str]]:
        """(target, module) of ``fn``'s parameters and assignments typed with a class."""
        found: list[tuple[ast.expr, str]] = []
        # parameters first, so that ``self.x = x`` knows what ``x`` is
        for node in sorted(ast.walk(fn), key=lambda n: not isinstance(n, ast.arg)):
            target: ast.expr | None = None
            t: str | None = None
            if isinstance(node, ast.arg):
                target, t = ast.Name(node.arg), self.type_of(node.annotation)
            elif isinstance(node, ast.AnnAssign):
                target, t = node.target, self.type_of(node.annotation)
            elif isinstance(node, ast.Assign) and isinstance(v := node.value, ast.Call | ast.Name):
                target = node.targets[0]
                t = self.type_of(v.func) if isinstance(v, ast.Call) else scope.get(v.id)
            if target is not None and t:
                found.append((target, t))
                if isinstance(target, ast.Name):
                    scope[target.id] = t
        return found

    def visit(self, body: list[ast.stmt], attrs: dict[str, str]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.ClassDef):
                fields = {s.target.id: t for s in stmt.body if isinstance(s, ast.AnnAssign)
                          and isinstance(s.target, ast.Name) and (t := self.type_of(s.annotation))}
                for fn in (s for s in stmt.body if isinstance(s, FUNCTIONS)):
                    if (any(isinstance(d, ast.Name) and d.id == "property" for d in fn.decorator_list)
                            and (t := self.type_of(fn.returns))):
                        fields[fn.name] = t
                    fields |= {target.attr: t for target, t in self.typed(fn, {})
                               if isinstance(target, ast.Attribute) and _is_self(target.value)}
                self.visit(stmt.body, fields)
            elif isinstance(stmt, FUNCTIONS):
                scope: dict[str, str] = {}
                self.typed(stmt, scope)
                for node in ast.walk(stmt):
                    if isinstance(node, ast.Attribute) and isinstance(obj := node.value, ast.Attribute | ast.Name):
                        if isinstance(obj, ast.Attribute):
                            t = attrs.get(obj.attr) if _is_self(obj.value) else None
                        else:
                            t = None if obj.id == "self" else scope.get(obj.id)
                        if t and t != self.module:
                            self.uses[self.module, t][node.attr] += 1

    def pairs(self) -> list[dict[str, Any]]:
        found = [{"a": a, "b": b, "members": len(c), "uses": c.total(), "names": sorted(c)}
                 for (a, b), c in self.uses.items()]
        return sorted(found, key=lambda p: (-p["members"], -p["uses"], p["a"], p["b"]))


def _is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"


def figures(package: Path, top: int) -> dict[str, Any]:
    modules = load(package)
    coupling = Coupling(modules)
    for name in modules:
        coupling.scan(name)
    runs = sorted(((n, r) for n, (tree, _, _) in modules.items() if (r := asyncio_runs(tree))), key=lambda x: -x[1])
    return {"package": str(package), "modules": len(modules), "lines": sum(m[1] for m in modules.values()),
            "largestClasses": largest_classes(modules)[:5], "modulePairs": coupling.pairs()[:top],
            "asyncioRun": {"total": sum(r for _, r in runs), "perModule": dict(runs)},
            "largestModules": [{"name": n, "lines": m[1]}
                               for n, m in sorted(modules.items(), key=lambda m: (-m[1][1], m[0]))][:top]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("package", nargs="?", type=Path, help="package directory [orchestrator/ next to bench/]",
                        default=Path(__file__).resolve().parent.parent / "orchestrator")
    parser.add_argument("--top", type=int, default=10, help="module pairs and modules shown [10]")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    if not args.package.is_dir():
        parser.error(f"not a directory: {args.package}")
    if args.top < 1:
        parser.error("--top must be >= 1")
    f = figures(args.package.resolve(), args.top)
    if args.json:
        print(json.dumps(f, indent=2))
        return 0
    print(f"package {f['package']}: {f['modules']} modules, {f['lines']} lines")
    print("largest classes (module, class, lines, methods):")
    for c in f["largestClasses"]:
        print(f"  {c['module']:34} {c['name']:24} {c['lines']:5} lines {c['methods']:4} methods")
    print("module pairs, most members reached first:")
    for p in f["modulePairs"]:
        print(f"  {p['a']} touches {p['members']} members of {p['b']} ({p['uses']} uses)")
    print(f"asyncio.run( calls: {f['asyncioRun']['total']} in total")
    for module, n in f["asyncioRun"]["perModule"].items():
        print(f"  {module:34} {n:5}")
    print("largest modules (lines):")
    for m in f["largestModules"]:
        print(f"  {m['name']:34} {m['lines']:5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
