"""Files that readers see whole or not at all, and the marker that says a directory is finished."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

COMPLETE = "COMPLETE"  # written last into a finished model or checkpoint directory


def is_complete(directory: Path) -> bool:
    return (Path(directory) / COMPLETE).exists()


def mark_complete(directory: Path) -> None:
    (Path(directory) / COMPLETE).write_text("")


def atomic_write_text(path: Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file of this process and a rename: concurrent readers
    (other ranks, other jobs of a sweep) see the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def write_json(path: Path, data: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=indent, default=float))


def read_json(path: Path, default: Any = None) -> Any:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else default


def write_jsonl(path: Path, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
