"""No code in train/ or launch/ that only the tests use (fast tier, pure file reads): a module nothing imports and
no entry point runs, or a public top-level function or class named nowhere but its own definition, belongs in
tests/helpers/ (or nowhere)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("train", "launch")
# Run as `python -m train.<name>` / `python launch/<name>.py`, or named by conf/ (Hydra _target_) and the Makefile.
ENTRY_POINT = re.compile(r'^if __name__ == "__main__":', re.MULTILINE)


def sources() -> dict[Path, str]:
    return {path: path.read_text() for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))}


def outside_code() -> str:
    """What names code besides Python imports: Hydra configs, the Makefile, pyproject.toml."""
    return "\n".join([*(p.read_text() for p in sorted((REPO / "conf").rglob("*.yaml"))),
                      (REPO / "Makefile").read_text(), (REPO / "pyproject.toml").read_text()])


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def unimported_modules(texts: dict[Path, str], graph: grimp.ImportGraph, extra: str) -> list[str]:
    found = []
    for path, text in texts.items():
        name = module_name(path)
        if path.name in ("__init__.py", "__main__.py") or ENTRY_POINT.search(text) or name in extra:
            continue
        if not graph.find_modules_that_directly_import(name):
            found.append(str(path.relative_to(REPO)))
    return found


def unnamed_definitions(texts: dict[Path, str], extra: str) -> list[str]:
    """Public top-level functions and classes whose name appears nowhere but in their own definition."""
    found = []
    for path, text in texts.items():
        for node in ast.parse(text, str(path)).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                word = re.compile(rf"\b{re.escape(node.name)}\b")
                if sum(len(word.findall(t)) for t in [*texts.values(), extra]) <= 1:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.name}")
    return found


def test_every_module_is_imported_or_an_entry_point():
    missing = unimported_modules(sources(), grimp.build_graph(*PACKAGES, cache_dir=None), outside_code())
    assert not missing, "modules nothing in train/ or launch/ imports (test-only code: move it to tests/helpers/):\n  " \
        + "\n  ".join(missing)


def test_every_public_function_and_class_is_used_outside_the_tests():
    unused = unnamed_definitions(sources(), outside_code())
    assert not unused, "defined in train/ or launch/ but named only by tests (move to tests/helpers/):\n  " \
        + "\n  ".join(unused)


def test_the_checks_find_test_only_code():
    texts = {REPO / "train" / "models" / "orphan.py": "def only_tests_call_me():\n    return 1\n",
             REPO / "train" / "models" / "user.py": "from train.models.orphan import used\n\n\ndef used():\n    used()\n"}
    graph = grimp.ImportGraph()
    graph.add_module("train.models.orphan")
    graph.add_import(importer="train.models.user", imported="train.models.orphan")
    graph.add_module("train.models.user")
    assert unimported_modules(texts, graph, "") == ["train/models/user.py"]
    assert unnamed_definitions(texts, "") == ["train/models/orphan.py:1: only_tests_call_me"]
