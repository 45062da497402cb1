"""Where things live, checked: no import circles between the package's modules, no module
reaching into another package's private names, no module over 500 lines without a stated
reason, and nothing importing a benchmark (benchmarks are leaves)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pipeline"
MAX_LINES = 500
LONG_REASON = "# Longer than 500 lines because"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def room(module: str) -> str:
    """What counts as one package: pipeline.x.y -> pipeline.x; a top-level module
    pipeline.x is a room of its own."""
    parts = module.split(".")
    return ".".join(parts[:2])


def resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not MODULES[module].name == "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str) -> list[tuple[str, list[str], ast.AST]]:
    """(imported module, names taken from it, node) for every import outside TYPE_CHECKING."""
    tree = ast.parse(MODULES[module].read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, [], node) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, node)
            names = [a.name for a in node.names]
            # ``from pipeline.x import y`` where y is a module
            for name in names:
                if f"{target}.{name}" in MODULES:
                    found.append((f"{target}.{name}", [], node))
            found.append((target, names, node))
    return [(t, n, node) for t, n, node in found if t in MODULES]


GRAPH = {m: sorted({t for t, _, _ in imports(m) if t != m}) for m in MODULES}


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def is_package_init(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def test_no_import_circles():
    assert cycles() == []


def test_no_module_takes_another_packages_private_names():
    offences = []
    for module in MODULES:
        bound: dict[str, str] = {}          # local name -> the pipeline module it came from
        for target, names, node in imports(module):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == target:
                        bound[alias.asname or alias.name] = target
            for alias in getattr(node, "names", []):
                if alias.name in names:
                    bound[alias.asname or alias.name] = target
                    if alias.name.startswith("_") and room(target) != room(module):
                        offences.append(f"{module}: from {target} import {alias.name}")
        tree = ast.parse(MODULES[module].read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__") and isinstance(node.value, ast.Name):
                source = bound.get(node.value.id)
                if source and room(source) != room(module):
                    offences.append(f"{module}:{node.lineno}: {node.value.id}.{node.attr} "
                                    f"(from {source})")
    assert offences == []


def test_long_modules_say_why():
    long = []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        if len(lines) > MAX_LINES and not any(l.startswith(LONG_REASON) for l in lines[:12]):
            long.append(f"{module}: {len(lines)} lines")
    assert long == []


def test_nothing_imports_a_benchmark():
    benches = {m for m in MODULES if m.startswith("pipeline.bench.") or m == "pipeline.bench"}
    importers = defaultdict(list)
    for module, targets in GRAPH.items():
        for target in targets:
            if target in benches and not module.startswith("pipeline.bench") \
                    and module != "pipeline.cli":
                importers[target].append(module)
    assert dict(importers) == {}


@pytest.mark.parametrize("module", ["pipeline.events", "pipeline.kafka"])
def test_shared_packages_say_what_is_public(module):
    tree = ast.parse(MODULES[module].read_text())
    names = [n for n in ast.walk(tree) if isinstance(n, ast.Assign)
             and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)]
    assert names, f"{module}/__init__.py has no __all__"
