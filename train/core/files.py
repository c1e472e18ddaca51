"""Files that readers see whole or not at all, the marker that says a directory is finished, content
hashes, and the sweep that removes what interrupted writers left behind."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

from train.core.errors import ConfigError
from train.core.locks import claim_path, unheld
from train.core.ranks import is_main_process

COMPLETE = "COMPLETE"  # written last into a finished model or checkpoint directory
BLOCK = 1 << 20  # 1 MiB reads: files to hash can be many GB; never hold one in memory


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
    """The file's JSON, `default` when there is no file. A file that is not JSON (cut short, edited, not text) is
    ConfigError naming it, not a JSONDecodeError traceback."""
    path = Path(path)
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        what = "not text"
        if isinstance(err, json.JSONDecodeError):
            what = f"{err.msg} at line {err.lineno} column {err.colno}"
        raise ConfigError(f"{path} is damaged ({what}): restore it or move it away") from None


def write_jsonl(path: Path, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def memoized_sha256(path: Path, memo_dir: Path) -> str:
    """sha256_file, remembered in `memo_dir` while the file keeps its size and mtime: cache keys of a 15 GB
    model or dataset must not re-read it every run. The memo is found by the file's path, the value depends
    only on its bytes: a copied or moved file is hashed once more, to the same value."""
    path = Path(path)
    stat = path.stat()
    stamp = [stat.st_size, stat.st_mtime_ns]
    memo = Path(memo_dir) / f"sha256-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]}.json"
    try:
        saved = json.loads(memo.read_text())
        if saved["stamp"] == stamp:
            return saved["sha256"]
    except (OSError, ValueError, KeyError, TypeError):  # absent or unreadable: hashed again
        pass
    value = sha256_file(path)
    memo.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(memo, json.dumps({"path": str(path.resolve()), "stamp": stamp, "sha256": value}))
    return value


# What interrupted writers leave behind, by name. A writer with a pid in the name is gone when that
# pid is not alive here and the file has not changed for PID_GRACE_S (on a file system shared between nodes the
# pid may be alive on another machine, but those writes take seconds). Without a pid: STALE_S untouched.
PID_TEMP = re.compile(r"^.+\.(\d+)\.tmp$")  # atomic_write_text's `<name>.<pid>.tmp`
STALE_FILES = (
    re.compile(r"^[0-9a-f]{20}\.[0-9a-f]{8}\.arrow$"),  # a reference-cache entry before its rename
    re.compile(r"^tmp[a-z0-9_]{8}$"),  # datasets' NamedTemporaryFile while it writes that entry
)
PID_GRACE_S = 600
STALE_S = 3600


def remove_orphans(directory: Path, depth: int = 1, claim: Path | None = None) -> int:
    """Remove the partial files of interrupted writes in `directory` (and `depth` - 1 levels below it), on
    the main process, with one line saying how many; returns that count. A file another live process may
    still be writing is kept: a live pid, a recent change, or a held lock.

    `claim`: a temporary directory this process is about to write (an SFT output before its rename). It is
    claimed with a shared lock on `<claim>.lock`, held until the process exits, so no other run's sweep
    removes it mid-write, however long it goes unchanged."""
    removed = sweep(Path(directory), depth) if is_main_process() and Path(directory).is_dir() else 0
    if removed:
        print(f"orphans: removed {removed} partial file(s) of interrupted writes under {directory}", flush=True)
    if claim is not None:
        claim_path(Path(claim))
    return removed


def sweep(directory: Path, depth: int) -> int:
    removed, now = 0, time.time()
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return 0
    for entry in entries:
        if entry.is_symlink():
            continue
        # A file that vanished (another rank, job or thread swept it first) or cannot be removed (permissions)
        # is left as it is: cleaning up must never stop the run.
        try:
            if entry.is_dir():
                if entry.suffix == ".tmp":
                    removed += remove_temp_dir(entry, now)
                elif depth > 1:
                    removed += sweep(entry, depth - 1)
            else:
                removed += remove_orphaned_file(entry, now)
        except OSError:
            continue
    return removed


def remove_orphaned_file(path: Path, now: float) -> int:
    age = now - path.stat().st_mtime
    match = PID_TEMP.match(path.name)
    if path.suffix == ".lock":  # removed only while we hold it: nobody held it at that moment
        return int(age > STALE_S and unheld(path, path.unlink))
    if match:
        orphaned = not pid_alive(int(match.group(1))) and age > PID_GRACE_S
    else:
        orphaned = any(p.match(path.name) for p in STALE_FILES) and age > STALE_S
    if orphaned:
        path.unlink()
    return int(orphaned)


def remove_temp_dir(directory: Path, now: float) -> int:
    """A `<name>.tmp/` directory: kept while its claim is held or when it holds a complete checkpoint (a
    preempted stage resumes from it); unclaimed (a writer that predates claims), kept until STALE_S untouched."""
    if any(is_complete(p) for p in directory.iterdir() if p.is_dir()):
        return 0
    lock = directory.with_name(directory.name + ".lock")
    if lock.exists():
        return int(unheld(lock, lambda: (shutil.rmtree(directory), lock.unlink())))
    newest = max([p.stat().st_mtime for p in directory.rglob("*")] + [directory.stat().st_mtime])
    if now - newest <= STALE_S:
        return 0
    shutil.rmtree(directory)
    return 1


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError as err:
        return err.errno != errno.ESRCH
    return True
