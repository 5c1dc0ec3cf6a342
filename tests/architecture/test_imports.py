"""The package's shape: no import cycles, pure clinical logic, tooling apart from the service.

Uses grimp (the import graph library behind import-linter), which sees every import statement,
including those inside functions; imports under ``if TYPE_CHECKING:`` are left out (never run).
"""

from __future__ import annotations

from pathlib import Path

import grimp
import pytest

PACKAGE = "cds_service"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(PACKAGE, exclude_type_checking_imports=True, cache_dir=None)


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a cycle to break.

    A package's ``__init__`` importing its own submodules is not a cycle for this purpose: edges from
    a package to its descendants are left out (``from pkg import x`` resolves through them).
    """
    modules = sorted(graph.modules)
    edges = {
        m: sorted(t for t in graph.find_modules_directly_imported_by(m) if not t.startswith(m + "."))
        for m in modules
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in modules:
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles(graph) -> None:
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_planted_cycle() -> None:
    planted = grimp.ImportGraph()
    for name in ("p", "p.a", "p.b", "p.c"):
        planted.add_module(name)
    planted.add_import(importer="p.a", imported="p.b")
    planted.add_import(importer="p.b", imported="p.a")
    planted.add_import(importer="p.c", imported="p.a")
    assert _cycles(planted) == [["p.a", "p.b"]]


def test_clinical_logic_imports_nothing_outside_itself(graph) -> None:
    clinical = {m for m in graph.modules if m == f"{PACKAGE}.clinical" or m.startswith(f"{PACKAGE}.clinical.")}
    outside = {
        (m, t)
        for m in clinical
        for t in graph.find_modules_directly_imported_by(m)
        if t.startswith(PACKAGE) and t not in clinical
    }
    assert outside == set()


def test_the_service_does_not_depend_on_tooling(graph) -> None:
    """Only the app factory may reach into tooling (it registers the console when it is enabled)."""
    tooling = f"{PACKAGE}.tooling"
    importers = {
        m
        for m in graph.modules
        if not (m == tooling or m.startswith(tooling + "."))
        for t in graph.find_modules_directly_imported_by(m)
        if t == tooling or t.startswith(tooling + ".")
    }
    assert importers <= {f"{PACKAGE}.app", f"{PACKAGE}.cli"}


def test_no_flask_test_client_or_second_app_inside_the_package() -> None:
    offenders = []
    for path in (REPO / PACKAGE).rglob("*.py"):
        text = path.read_text("utf-8")
        rel = path.relative_to(REPO).as_posix()
        if "test_client(" in text:
            offenders.append(f"{rel}: test_client")
        if "create_app(" in text and rel not in {f"{PACKAGE}/app.py", f"{PACKAGE}/server.py", f"{PACKAGE}/cli.py"}:
            offenders.append(f"{rel}: create_app")
    assert offenders == []
