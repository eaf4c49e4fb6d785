"""The layering of the three packages, read from the source with ``ast`` (function-level imports included).

- ``tfrec`` (the library) imports neither app (``trainer``, ``serving``);
- no import cycle among the modules of ``tfrec``, ``trainer`` and ``serving``;
- no source file over 400 lines, and ``trainer/task.py`` (a thin CLI) at most 120.

An edge ``a -> b`` is an explicit import of ``b`` anywhere in ``a`` (``from b import name`` is an edge to
``b.name`` when that is a module, else to ``b``); the implicit import of a parent package is not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tfrec", "trainer", "serving")


def module_files() -> dict[str, Path]:
    """Dotted module name -> its source file, for every .py file of the three packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of the three packages it imports (at any depth in its code)."""
    modules = module_files()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolved against this module's package
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    package = package[:len(package) - (node.level - 1)]
                    base = ".".join(package + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:  # `import tfrec.x.y` of a name inside a module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_function_level_imports():
    # The walk itself: a known edge from a function-level import (tfrec.run -> tfrec.export.savedmodel).
    graph = import_graph()
    assert "tfrec.export.savedmodel" in graph["tfrec.run"]
    assert "tfrec.cli" in graph["trainer.task"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_library_imports_no_app():
    graph = import_graph()
    bad = sorted(f"{m} -> {t}" for m, targets in graph.items() if m.split(".")[0] == "tfrec"
                 for t in targets if t.split(".")[0] in ("trainer", "serving"))
    assert not bad, "tfrec must not import an app:\n" + "\n".join(bad)


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_source_file_over_400_lines():
    long = sorted(f"{p.relative_to(REPO)}: {n}" for p in module_files().values()
                  if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400)
    assert not long, "files over 400 lines:\n" + "\n".join(long)


def test_the_trainer_cli_is_thin():
    lines = len((REPO / "trainer" / "task.py").read_text(encoding="utf-8").splitlines())
    assert lines <= 120, f"trainer/task.py has {lines} lines; training belongs in tfrec.run"
