"""Locks held by a running process and released by the OS when it dies: a crashed run never blocks its rerun
and a live writer's temporary directory is never swept (the one home for flock in the project).

flock(2) on a file next to what it guards. Descriptors are kept open for the life of the process."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

_held: dict[str, int] = {}  # lock path -> open descriptor: closing it (or dying) releases the lock
_claims: list[int] = []  # shared-lock descriptors kept open for the process's life (claim_path)


def hold_exclusive(lock: Path) -> Optional[dict]:
    """Take `lock` for this process; None when taken (or already ours), else what the holder wrote in it
    (pid, host, started, command)."""
    key = str(Path(lock).absolute())
    if key in _held:
        return None
    Path(lock).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 1 << 16)
        os.close(fd)
        try:
            return json.loads(holder)
        except ValueError:
            return {}
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(sys.argv)[:500]}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(holder).encode())
    _held[key] = fd
    return None


def release(lock: Path) -> None:
    fd = _held.pop(str(Path(lock).absolute()), None)
    if fd is not None:
        os.close(fd)


def unheld(lock: Path, remove) -> bool:
    """Run `remove` while holding `lock` exclusively, if nobody else holds it; False (nothing removed) when
    someone does or flock cannot tell (a file system without it)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        remove()
        return True
    finally:
        os.close(fd)


def claim_path(path: Path) -> None:
    """Hold a shared lock on `<path>.lock` until the process exits. Checked after locking that the file is
    still the one at that name: a sweep may have removed it between our open and our lock."""
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                _claims.append(fd)
                return
        except FileNotFoundError:
            pass
        os.close(fd)
