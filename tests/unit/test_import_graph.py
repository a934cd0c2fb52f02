"""hakit's modules import each other without a cycle, and every one of them imports.

The graph is read from each module's source (its AST), so an import inside a
function counts as much as one at the top: a cycle that only closes when a
function runs is still a cycle (it is how ``config`` and ``configcheck`` used to
lean on each other). An edge goes to the module named: ``from hakit.config
import Config`` to ``hakit.config`` (the package, whose ``__init__`` re-exports),
``from hakit.supervisor import shim`` to ``hakit.supervisor.shim``. The implicit
import of a package's ``__init__`` before one of its modules is not an edge (a
package that re-exports its modules would otherwise always be a cycle). What
keeps that harmless is the rule that a module inside a package imports its
siblings directly, never through the package: one that went through a package
re-exporting it would close a cycle here.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import hakit

SOURCE_ROOT = Path(hakit.__file__).resolve().parent  # src/hakit


def _source_of(name: str) -> Path | None:
    """The .py file of module ``name`` (None: no source, e.g. mypyc's group library)."""
    parts = name.split(".")[1:]
    base = SOURCE_ROOT.joinpath(*parts)
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def _modules() -> dict[str, Path]:
    """Every hakit module with a source, by name (the compiled router's included once)."""
    found = {"hakit": SOURCE_ROOT / "__init__.py"}
    for info in pkgutil.walk_packages(hakit.__path__, "hakit."):
        source = _source_of(info.name)
        if source is not None:
            found[info.name] = source
    return found


MODULES = _modules()


def _run_time_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:`` (imports for the type
    checker alone never run, so they make no cycle)."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and ast.unparse(child.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            for statement in child.orelse:
                yield statement
                yield from _run_time_nodes(statement)
            continue
        yield child
        yield from _run_time_nodes(child)


def _imported(name: str, source: Path) -> Iterator[str]:
    """The hakit modules ``name`` names in any import statement, at any depth."""
    package = name if source.name == "__init__.py" else name.rpartition(".")[0]
    for node in _run_time_nodes(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                yield submodule if submodule in MODULES else target


def import_graph() -> dict[str, set[str]]:
    return {
        name: {target for target in _imported(name, source) if target in MODULES} - {name}
        for name, source in MODULES.items()
    }


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One cycle (its first module repeated at the end), or None when the graph is acyclic."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path = [start]  # the depth-first path from start; on_path: the same, as a set
        on_path = {start}
        stack = [iter(sorted(graph[start]))]
        while stack:
            following = next(stack[-1], None)
            if following is None:  # every module start..path[-1] imports is done
                stack.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
            elif following in on_path:
                return [*path[path.index(following) :], following]
            elif following not in done:
                path.append(following)
                on_path.add(following)
                stack.append(iter(sorted(graph.get(following, ()))))
    return None


def test_the_graph_is_read() -> None:
    graph = import_graph()
    sources = {path for path in SOURCE_ROOT.rglob("*.py") if "_compiled" not in path.parts}
    assert set(MODULES.values()) == sources  # every module, none missed by walk_packages
    assert "hakit.config" in graph["hakit.cli.base"]
    assert "hakit.supervisor.lifeline" in graph["hakit.supervisor.shim"]


def test_hakit_modules_import_no_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_find_cycle_finds_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.endswith("__main__")))
def test_every_module_imports(name: str) -> None:
    importlib.import_module(name)


def test_the_shim_loads_only_its_neighbours() -> None:
    # The shim starts with every app start (python -m hakit.supervisor.shim): it must not
    # pull in asyncio, pydantic or the agent through a package's __init__.
    code = (
        "import sys, hakit.supervisor.shim; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('hakit')))); "
        "print(' '.join(m for m in ('asyncio', 'pydantic', 'httpx') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    hakit_modules, heavy = ([*result.stdout.splitlines(), "", ""])[:2]
    assert hakit_modules.split() == [
        "hakit",
        "hakit.supervisor",
        "hakit.supervisor.cgroup",
        "hakit.supervisor.lifeline",
        "hakit.supervisor.proctable",
        "hakit.supervisor.shim",
    ]
    assert heavy == ""
