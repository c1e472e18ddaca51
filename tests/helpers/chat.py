"""Plain strings -> chat messages: what the synthetic data's conversational rows are expected to equal."""

from __future__ import annotations


def to_conversational(row: dict) -> dict:
    """Plain strings -> chat messages: the prompt is a user turn, each response an assistant turn."""
    out = {}
    for key, value in row.items():
        role = "user" if key == "prompt" else "assistant"
        out[key] = [{"role": role, "content": value}] if key in ("prompt", "completion", "chosen", "rejected") else value
    return out
