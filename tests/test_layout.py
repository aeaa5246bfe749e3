"""The code's shape, held: one folder per axis with imports one way, no cycles, small modules, thin pages.

import-linter (pyproject.toml, run by `make test`) holds the layers; these tests hold what it does not: no cycle
inside a layer, no import of the lab's own code hidden inside a function, and the size limits.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE_MAX_LINES = 450
PAGE_MAX_LINES = 150
# Modules that import the lab inside a function on purpose, and why (torch in a light module).
LAZY_ON_PURPOSE = {
    "core/launch/ray_tasks.py": "a Ray task says 'start' before it spends seconds importing torch and the lab",
}


def _core_modules() -> list[Path]:
    return sorted(p for p in (ROOT / "core").rglob("*.py") if "migrations" not in p.parts)


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm: the groups of modules that reach each other (a group of one is no cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            groups.append(group)

    for node in list(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_import_cycle_among_core_modules():
    graph = grimp.build_graph("core")
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    # A package's __init__ importing its own submodules (to register them) is not a cycle of the code's logic.
    cycles = [g for g in _strongly_connected(edges) if len(g) > 1]
    assert not cycles, f"import cycles among core modules: {cycles}"


def test_the_strongly_connected_check_finds_a_cycle():
    assert _strongly_connected({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [{"a", "b"}, {"c"}]


def _function_level_imports_of_core(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("core"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} from {node.module}")
            elif isinstance(node, ast.Import) and any(a.name.startswith("core") for a in node.names):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} import {node.names[0].name}")
    return found


def test_no_core_module_imports_the_lab_inside_a_function():
    """Lazy imports are for heavy optional libraries (llama_cpp, ray, psycopg) only, never to dodge a circle."""
    hidden = [hit for path in _core_modules() if str(path.relative_to(ROOT)) not in LAZY_ON_PURPOSE
              for hit in _function_level_imports_of_core(path)]
    assert not hidden, "imports of core placed inside functions:\n" + "\n".join(hidden)



def _imported_top_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    return names | {(node.module or "").split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and not node.level}


def test_core_imports_neither_streamlit_nor_the_ui():
    """core/ is usable from a notebook or the CLI: what pages share goes to ui/, and ui/ imports core, never back."""
    found = [f"{path.relative_to(ROOT)}: {sorted(hit)}" for path in _core_modules()
             if (hit := _imported_top_names(path) & {"streamlit", "ui", "pages", "app"})]
    assert not found, "core modules importing UI code:\n" + "\n".join(found)

@pytest.mark.parametrize("path", _core_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_modules_stay_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= CORE_MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines; split it along its levels"


@pytest.mark.parametrize("path", sorted((ROOT / "pages").glob("*.py")), ids=lambda p: p.name)
def test_pages_stay_thin(path):
    lines = len(path.read_text().splitlines())
    assert lines <= PAGE_MAX_LINES, f"pages/{path.name} has {lines} lines; move its logic into core/ or ui/"


def test_pages_holds_the_pages_and_only_them():
    """Every file in pages/ is one of app.py's pages, and every page is there: what pages share goes to ui/."""
    listed = set(re.findall(r'"(pages/\w+\.py)"', (ROOT / "app.py").read_text()))
    held = {f"pages/{p.name}" for p in (ROOT / "pages").iterdir() if p.name != "__pycache__"}
    assert listed and held == listed, f"not a page of app.py: {sorted(held - listed)}; missing: {sorted(listed - held)}"


# Starters that may run Streamlit's own `streamlit run`, and why.
PLAIN_STREAMLIT_RUN = {
    "benchmarks/classroom_load/lab.py": "an old checkout given as the baseline is started as it was then, without ui/",
}


def test_the_dashboard_is_started_through_ui_server():
    """A plain `streamlit run app.py` gives a fresh server's first visitor Streamlit's listing of pages/ instead of
    app.py's navigation (ui/server.py says why): every starter runs `python -m ui.server run app.py` instead."""
    plain = re.compile(r"""["']streamlit["'],\s*["']run["']""")
    found = [str(path.relative_to(ROOT)) for folder in ("core", "ui", "tests", "benchmarks")
             for path in sorted((ROOT / folder).rglob("*.py"))
             if plain.search(path.read_text()) and str(path.relative_to(ROOT)) not in PLAIN_STREAMLIT_RUN]
    assert not found, ("plain streamlit run in " + ", ".join(found)
                       + "; start the dashboard with [sys.executable, '-m', 'ui.server', 'run', 'app.py', ...]")
