"""A local file that datasets' loader refuses because of a few broken rows, read again without them.

datasets reads JSON lines with pyarrow (then pandas), and one unparsable line fails the whole file. Malformed
rows are meant to be dropped and counted (validation.py), so on that failure the file is read line by line:
a line that is not one JSON object is left out and its place (file:line) reported, and the rest goes through
the same loader, so the columns and types come out as they would have. CSV rows with more fields than the
header are skipped likewise (pandas' python engine hands each one over).
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path
from typing import Optional

import datasets

# Where a skipped line was, and how many good rows came before it (so data.max_rows can leave later ones out).
Skipped = list[tuple[str, int]]


def is_json_lines(path: str) -> bool:
    return path.lower().removesuffix(".gz").endswith(".jsonl")


def reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")  # json.loads accepts NaN/Infinity; pyarrow does not


def one_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line, parse_constant=reject_constant), dict)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return False


def json_lines(files: list[str]) -> Optional[tuple["datasets.Dataset", Skipped]]:  # noqa: F821
    skipped: Skipped = []
    good = 0
    with tempfile.TemporaryDirectory() as tmp:
        clean = Path(tmp) / "rows.jsonl"
        with open(clean, "wb") as out:
            for file in files:
                with (gzip.open if file.lower().endswith(".gz") else open)(file, "rb") as lines:
                    for number, line in enumerate(lines, 1):
                        if not line.strip():
                            continue
                        if one_object(line):
                            out.write(line.rstrip(b"\r\n") + b"\n")
                            good += 1
                        else:
                            skipped.append((f"{file}:{number}", good))
        if not skipped or not good:  # every line parses (another problem), or none does (not JSON lines)
            return None
        # In memory, so nothing points into the temporary directory once it is gone.
        rows = datasets.load_dataset("json", data_files=str(clean), split="train", keep_in_memory=True,
                                     cache_dir=str(Path(tmp) / "cache"))
    return rows, skipped


def csv_rows(files: list[str]) -> Optional[tuple["datasets.Dataset", Skipped]]:  # noqa: F821
    skipped: Skipped = []

    def skip(fields: list[str]) -> None:  # pandas hands over the row, not its line number
        skipped.append((f"a CSV row of {len(fields)} fields", 0))

    with tempfile.TemporaryDirectory() as tmp:  # a fresh cache: a cached table would skip nothing and count nothing
        try:
            rows = datasets.load_dataset("csv", data_files=files, split="train", engine="python", on_bad_lines=skip,
                                         keep_in_memory=True, cache_dir=tmp)
        except Exception:  # e.g. an unclosed quote: nothing to skip, the file needs fixing
            return None
    return (rows, skipped) if skipped else None


def without_bad_rows(fmt: str, files: list[str]) -> Optional[tuple["datasets.Dataset", Skipped]]:  # noqa: F821
    """(the rows that parse, where the others were), or None when no row is broken: then the loader's own
    error is the one to report."""
    if fmt == "json" and all(is_json_lines(f) for f in files):
        return json_lines(files)
    if fmt == "csv":
        return csv_rows(files)
    return None
