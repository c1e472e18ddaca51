"""Disk problems as one line that names the path and the cause (no space left, read-only, no permission),
instead of a library traceback (`unexpected pos ...` from torch's zip writer when the disk is full)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Optional

STORAGE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                  errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "not permitted"}
FULL_BELOW_BYTES = 1 << 20  # under 1 MiB free: a failed write there was the disk filling up


def existing_ancestor(path: Path) -> Path:
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def unwritable(root: Path) -> Optional[str]:
    """Why nothing can be written under `root` (created on first use), or None."""
    base = existing_ancestor(root)
    if os.access(base, os.W_OK):
        return None
    try:  # tells a read-only mount from missing permissions
        os.statvfs(base)
        readonly = bool(os.statvfs(base).f_flag & os.ST_RDONLY)
    except OSError:
        readonly = False
    return f"{base} is {'on a read-only file system' if readonly else 'not writable'}"


def storage_problem(err: BaseException, root: Path) -> Optional[str]:
    """A one-line description if `err` came from the disk under `root`, else None (a bug: let it raise)."""
    base = existing_ancestor(root)
    if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
        return f"{err.filename or base}: {STORAGE_ERRNOS[err.errno]}"
    try:
        free = shutil.disk_usage(base).free
    except OSError:
        return None
    if free < FULL_BELOW_BYTES:
        return f"{base}: no space left on device ({free // 1024} KiB free; {type(err).__name__} while writing)"
    return None
