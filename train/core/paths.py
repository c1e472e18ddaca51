"""Telling a local path from a hub id."""

from __future__ import annotations


def looks_like_local_path(name: str) -> bool:
    """A hub id is `owner/name`: one slash, no leading `/`, `.` or `~`. Anything else is meant as a path."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") != 1
