"""The layout rules, checked on the source (fast tier: under a second each, plus the imports):
the import-linter contracts in pyproject.toml, no import cycles between modules, every module imports,
module sizes, and imports inside functions only where a comment says they are deliberately deferred.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("train", "launch")
MAX_MODULE_LINES = 300
MAX_ENTRY_POINT_LINES = 120
# The entry points of train/ (launch/ holds operator tools, not train's entry points).
ENTRY_POINTS = ("train/main.py", "train/prepare.py", "train/report.py", "train/__main__.py")


def python_files() -> list[Path]:
    return [path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))]


def test_import_contracts_hold():
    """pyproject.toml [tool.importlinter]: train/'s layers, train never imports launch, train.core is stdlib
    only. grimp sees imports inside functions too."""
    lint_imports = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"lint-imports failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"


def module_names() -> list[str]:
    names = [".".join(path.relative_to(REPO).with_suffix("").parts) for path in python_files()]
    # __main__ runs the pipeline when imported.
    return [name.removesuffix(".__init__") for name in names if not name.endswith("__main__")]


def test_every_module_imports():
    """import-linter and grimp skip an import of a module that does not exist (a stale path after a move):
    importing each module catches it in seconds."""
    failed = []
    for module in module_names():
        try:
            importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 - every broken module is listed, not just the first
            failed.append(f"{module}: {type(err).__name__}: {err}")
    assert not failed, "modules that do not import:\n  " + "\n  ".join(failed)


def strongly_connected_components(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit on long chains)."""
    index, low, on_stack, stack, components, counter = {}, {}, set(), [], [], 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    edges = {module: graph.find_modules_directly_imported_by(module) for module in graph.modules}
    return [component for component in strongly_connected_components(edges) if len(component) > 1]


def test_no_import_cycles_between_modules():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    cycles = import_cycles(graph)
    assert not cycles, "modules that import each other (directly or around a loop):\n  " + "\n  ".join(
        " <-> ".join(cycle) for cycle in cycles)


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for importer, imported in [("a.x", "a.y"), ("a.y", "a.z"), ("a.z", "a.x"), ("a.z", "a.w")]:
        graph.add_import(importer=importer, imported=imported)
    assert import_cycles(graph) == [["a.x", "a.y", "a.z"]]


def line_count(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_no_module_over_300_lines():
    too_long = [f"{path.relative_to(REPO)}: {line_count(path)} lines" for path in python_files()
                if line_count(path) > MAX_MODULE_LINES]
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines (split them):\n  " + "\n  ".join(too_long)


def test_entry_points_under_120_lines():
    too_long = [f"{name}: {line_count(REPO / name)} lines" for name in ENTRY_POINTS
                if line_count(REPO / name) >= MAX_ENTRY_POINT_LINES]
    assert not too_long, (f"entry points of {MAX_ENTRY_POINT_LINES} lines or more (move the work into the "
                          "pipeline):\n  " + "\n  ".join(too_long))


def says_deferred(lines: list[str], lineno: int) -> bool:
    """The import's own line, or the comment block right above it, says the import is deferred."""
    if "deferred" in lines[lineno - 1].lower():
        return True
    above = lineno - 2
    while above >= 0 and lines[above].strip().startswith("#"):
        if "deferred" in lines[above].lower():
            return True
        above -= 1
    return False


def undeclared_function_imports(source: str) -> list[tuple[int, str]]:
    lines, found = source.splitlines(), []
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not says_deferred(lines, node.lineno):
                found.append((node.lineno, lines[node.lineno - 1].strip()))
    return sorted(set(found))


def test_imports_inside_functions_only_where_deliberately_deferred():
    found = [f"{path.relative_to(REPO)}:{lineno}: {text}" for path in python_files()
             for lineno, text in undeclared_function_imports(path.read_text())]
    assert not found, ("imports inside functions without a comment saying why they are deferred (move them to the "
                       "top of the module, or say `# deferred: <why>`):\n  " + "\n  ".join(found))


@pytest.mark.parametrize("source, undeclared", [
    ("def f():\n    import torch\n", [(2, "import torch")]),
    ("def f():\n    import torch  # deferred: heavy\n", []),
    ("def f():\n    # Deferred on purpose: heavy,\n    # and only needed here.\n    import torch\n", []),
    ("def f():\n    # heavy\n\n    import torch\n", [(4, "import torch")]),
    ("import torch\n\n\ndef f():\n    return torch\n", []),
])
def test_the_deferred_import_rule(source, undeclared):
    assert undeclared_function_imports(source) == undeclared
