"""Shared pieces of the converters: reading fields of native rows, and presenting canonical rows to TRL.

A converter is a pure function `convert(row, opts) -> list[dict | Fix] | DropReason` from one native
row to canonical pairs {prompt, chosen, rejected}: the prompt is a string (one user turn) or a list of
chat messages (a multi-turn history); chosen and rejected are the response texts. Fix entries in the
list record what was repaired on the way (validation.py counts them).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from train.data.validation import DropReason, check_messages, check_text

ROLE_NAMES = {"user": "Human", "assistant": "Assistant", "system": "System"}  # one per validation.CHAT_ROLES
RESPONSE_KEYS = ("chosen", "rejected", "completion")


class Dropped(Exception):
    """Raised inside a converter; the `converter` decorator turns it into the returned DropReason."""

    def __init__(self, reason: str, field: str = ""):
        super().__init__(reason)
        self.drop = DropReason(reason, field)


def converter(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(row: dict, opts: dict):
        try:
            return fn(row, opts)
        except Dropped as dropped:
            return dropped.drop

    return wrapper


def get(row: dict, path: str) -> Any:
    """The value at a dotted path (`question.full_text`); a missing key or null is a missing field."""
    value: Any = row
    for key in path.split("."):
        if not isinstance(value, dict) or value.get(key) is None:
            raise Dropped("missing_field", path)
        value = value[key]
    return value


def text(row: dict, path: str) -> str:
    return as_text(get(row, path), path)


def as_text(value: Any, field: str) -> str:
    problem = check_text(value, field)
    if problem:
        raise Dropped(problem.reason, field)
    return value.strip()


def messages(value: Any, field: str) -> list[dict]:
    """Chat messages reduced to {role, content}, so every row has the same Arrow schema."""
    problem = check_messages(value, field)
    if problem:
        raise Dropped(problem.reason, problem.field)
    return [{"role": str(m["role"]), "content": m["content"].strip()} for m in value]


def number(row: dict, path: str) -> float:
    value = get(row, path)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Dropped("malformed", f"{path} is not a number")
    return float(value)


def render_plain(history: list[dict]) -> str:
    """A chat history as hh-rlhf-style text, ending in the cue for the next assistant turn."""
    turns = [f"{ROLE_NAMES.get(m['role'], m['role'].title())}: {m['content']}" for m in history]
    return "\n\n".join(turns) + "\n\nAssistant:"


def present(row: dict, conversational: bool) -> dict:
    """Canonical row -> what TRL reads: chat messages (rendered by the model's chat template), or plain
    strings. Plain responses start with a space because TRL joins prompt + response with nothing between."""
    prompt = row["prompt"]
    if conversational:
        out = {"prompt": prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]}
        out.update({k: [{"role": "assistant", "content": row[k]}] for k in RESPONSE_KEYS if k in row})
    else:
        out = {"prompt": render_plain(prompt) if isinstance(prompt, list) else prompt}
        out.update({k: " " + row[k] for k in RESPONSE_KEYS if k in row})
    return out


def prompt_key(prompt: Any) -> str:
    """A hashable identity of a prompt (string or messages), for grouping and deduplication."""
    if isinstance(prompt, str):
        return prompt
    return "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in prompt)
