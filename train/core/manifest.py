"""A checkpoint's manifest: every file's relative path, size and sha256, written before COMPLETE.

COMPLETE says that every rank finished writing; the manifest says that what is on disk now is what was
written then. A file flipped in place (same size) or truncated after the save, or a file added or removed,
no longer matches, and resume falls back to an older checkpoint instead of training on it or dying in a
library's loader.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from train.core.files import COMPLETE, atomic_write_text, sha256_file

MANIFEST = "MANIFEST.json"
FORMAT = 1
# hashlib releases the GIL on large blocks: threads hash a ZeRO checkpoint's per-rank shards side by side, so
# the other ranks, waiting in a barrier meanwhile, are not held for the sum of the files (a 7B checkpoint is ~100 GB).
HASH_THREADS = min(8, os.cpu_count() or 1)


def sha256_files(directory: Path, relative: list[str]) -> dict[str, str]:
    with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
        return dict(zip(relative, pool.map(lambda rel: sha256_file(Path(directory) / rel), relative)))


def listed_files(directory: Path) -> list[str]:
    """Relative paths (POSIX) of every file under `directory` but the manifest and the marker, sorted."""
    directory = Path(directory)
    skip = {MANIFEST, COMPLETE}
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                  if p.is_file() and p.relative_to(directory).as_posix() not in skip)


def write_manifest(directory: Path) -> Path:
    """Hash every file of `directory` into `directory/MANIFEST.json` (atomically: a crash leaves none)."""
    directory = Path(directory)
    relative = listed_files(directory)
    hashes = sha256_files(directory, relative)
    files = {rel: {"size": (directory / rel).stat().st_size, "sha256": hashes[rel]} for rel in relative}
    return atomic_write_text(directory / MANIFEST, json.dumps({"format": FORMAT, "files": files}, indent=1))


def manifest_problem(directory: Path) -> str | None:
    """None if `directory` holds exactly the files its manifest lists, each with its size and sha256;
    otherwise the first problem found, naming the file (e.g. `optimizer.pt: sha256 mismatch`)."""
    directory = Path(directory)
    try:
        listed = json.loads((directory / MANIFEST).read_text())["files"]
        files = {str(rel): {"size": int(e["size"]), "sha256": str(e["sha256"])} for rel, e in listed.items()}
    except FileNotFoundError:
        return f"no {MANIFEST}"
    except (ValueError, KeyError, TypeError, AttributeError):  # damaged or hand-edited: same as a damaged file
        return f"{MANIFEST}: unreadable"
    present = listed_files(directory)
    for rel in present:
        if rel not in files:  # loaders glob for shards: an added file can change what gets loaded
            return f"{rel}: not in the manifest"
    for rel, expected in files.items():  # sizes first: a truncated file is named without hashing anything
        path = directory / rel
        if not path.is_file():
            return f"{rel}: missing"
        size = path.stat().st_size
        if size != expected["size"]:
            return f"{rel}: size {size} != {expected['size']}"
    hashes = sha256_files(directory, list(files))
    for rel, expected in files.items():
        if hashes[rel] != expected["sha256"]:
            return f"{rel}: sha256 mismatch"
    return None
