"""Nested dicts <-> flat keys."""

from __future__ import annotations

from typing import Any


def flatten(tree: Any, sep: str = "/", prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a/b": 1}. W&B keys use "/", report columns use "."."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, sep, path))
        else:
            out[path] = value
    return out
