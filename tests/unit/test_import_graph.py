"""No import cycles inside taskpool (read from the source with ast; the layers between packages
are import-linter's contracts in pyproject.toml, checked by scripts/test.sh).

An import at module level that closes a cycle makes the result depend on which module is
imported first. Imports inside functions run later, when both modules are loaded; a cycle
through them is allowed only where listed below.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def modules() -> dict[str, tuple[Path, bool]]:
    """Every module of taskpool: dotted name -> (file, is a package's __init__)."""
    found = {}
    for path in (ROOT / "taskpool").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imports_of(name: str, known: dict[str, tuple[Path, bool]], *, in_functions: bool) -> set[str]:
    """The taskpool modules ``name`` imports (not under ``if TYPE_CHECKING``)."""
    path, is_package = known[name]
    package = name if is_package else name.rpartition(".")[0]

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    found: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_only(child):
                continue
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            skip = in_function and not in_functions
            if isinstance(child, ast.Import) and not skip:
                found.update(t for a in child.names if (t := resolve(a.name)))
            elif isinstance(child, ast.ImportFrom) and not skip:
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - child.level + 1] + ([base] if base else []))
                for alias in child.names:
                    target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else resolve(base)
                    if target:
                        found.add(target)
            visit(child, inside)

    visit(ast.parse(path.read_text()), False)
    found.discard(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[str, ...]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
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
                found.append(tuple(sorted(component)))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_no_import_cycle_at_module_level() -> None:
    known = modules()
    graph = {name: imports_of(name, known, in_functions=False) for name in known}
    assert cycles(graph) == []


def test_no_import_cycle_even_through_imports_in_functions() -> None:
    known = modules()
    graph = {name: imports_of(name, known, in_functions=True) for name in known}
    assert cycles(graph) == []


def test_the_reader_sees_imports() -> None:
    """The check above cannot pass by reading nothing."""
    known = modules()
    assert "taskpool.core.errors" in imports_of("taskpool.client.task", known, in_functions=False)
    # TaskpoolTask.map imports fan-out when called.
    assert "taskpool.client.fanout" in imports_of("taskpool.client.task", known, in_functions=True)
    assert "taskpool.client.fanout" not in imports_of("taskpool.client.task", known, in_functions=False)
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [("a", "b")]
