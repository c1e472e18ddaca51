"""The README and docs/ stay navigable (fast tier, pure file reads): the README's code map names every package,
every relative link points at a file and heading that exist, and the README stays a short front page."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_LINES = 200
# Top-level folders the code map must name besides train/'s packages and modules.
TOP_LEVEL = ("launch/", "conf/", "tests/")

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose(text: str) -> str:
    """The text without fenced blocks and code spans, where brackets are code, not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for match in HEADING.finditer(FENCE.sub("", path.read_text())):
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def code_map() -> str:
    text = README.read_text()
    match = re.search(r"^## Code map\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, "README.md has no '## Code map' section"
    return match.group(1)


def named_paths(section: str) -> set[str]:
    """The paths in the first column of the code map's table (`train/data/`, `train/main.py`, ...)."""
    firsts = re.findall(r"^\|\s*([^|\n]+?)\s*\|", section, re.M)
    return {span.strip("`").rstrip("/") for first in firsts for span in re.findall(r"`[^`\n]+`", first)}


def required_code_map_paths() -> list[str]:
    train = REPO / "train"
    packages = sorted(f"{init.parent.relative_to(REPO).as_posix()}/"
                      for init in train.rglob("__init__.py") if init.parent != train)
    modules = sorted(p.relative_to(REPO).as_posix() for p in train.glob("*.py") if not p.name.startswith("__"))
    return [*packages, *modules, *TOP_LEVEL]


def test_code_map_names_every_package():
    """Every package under train/ (a directory with __init__.py), every top-level module of train/, and launch/,
    conf/, tests/ have a line in the README's code map: adding a package without one fails here."""
    named = named_paths(code_map())
    missing = [path for path in required_code_map_paths() if path.rstrip("/") not in named]
    assert not missing, f"README.md '## Code map' has no line for: {', '.join(missing)}"


def test_code_map_names_only_existing_paths():
    stale = sorted(path for path in named_paths(code_map()) if not (REPO / path).exists())
    assert not stale, f"README.md '## Code map' names paths that do not exist: {', '.join(stale)}"


def test_relative_links_resolve():
    """Every relative link in README.md and docs/*.md points at an existing file, and at an existing heading when
    it has an anchor (GitHub's heading slugs)."""
    broken = []
    for source in markdown_files():
        for target in LINK.findall(prose(source.read_text())):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            path = (source.parent / file_part).resolve() if file_part else source
            where = f"{source.relative_to(REPO)}: ({target})"
            if not path.exists():
                broken.append(f"{where}: no such file")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{where}: no heading with anchor #{anchor} in {path.relative_to(REPO)}")
    assert not broken, "broken links:\n  " + "\n  ".join(broken)


def test_readme_links_every_doc():
    linked = {(REPO / target.partition("#")[0]).resolve() for target in LINK.findall(prose(README.read_text()))}
    unlinked = [p.relative_to(REPO).as_posix() for p in DOCS.glob("*.md") if p.resolve() not in linked]
    assert not unlinked, f"README.md does not link to: {', '.join(sorted(unlinked))}"


def test_each_doc_starts_with_a_title_and_a_one_line_summary():
    bad = []
    for path in sorted(DOCS.glob("*.md")):
        lines = path.read_text().splitlines() + ["", "", ""]
        if not (lines[0].startswith("# ") and lines[1] == "" and lines[2].strip() and not lines[2].startswith("#")):
            bad.append(path.relative_to(REPO).as_posix())
    assert not bad, f"docs without '# Title', a blank line, then a one-line summary: {', '.join(bad)}"


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines (limit {MAX_README_LINES}): move reference material into docs/ and link it")


def test_no_tracker_references():
    """The issue tracker is not in the repository: say the reason or link a docs/ section instead."""
    found = [f"{path.relative_to(REPO)}:{n}: {line.strip()}" for path in markdown_files()
             for n, line in enumerate(path.read_text().splitlines(), 1) if re.search(r"\bissues? #?\d+", line, re.I)]
    assert not found, "issue-number references:\n  " + "\n  ".join(found)
