"""Values of our typed groups and of the `*.args` pass-throughs checked against their declared types at start.

OmegaConf checks the schema's types, but Hydra's `+key=value` adds keys to a typed node without a
complaint (`+beta.vlue=0.2` was accepted and ignored), and TRL's dataclasses do not check their field
types (`dpo.args.learning_rate=abc` passed validation and failed after SFT, at the first DPO step).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf

from train.config.schema import MainConfig
from train.core.errors import ConfigError

MAX_ITEMS_SHOWN = 6


def check_known_keys(cfg: DictConfig) -> None:
    """Every key of our own groups is a schema field; dict-typed fields (`*.args`, data.options,
    deepspeed.config) are pass-throughs checked by their readers."""
    _check_node(OmegaConf.to_container(cfg, resolve=False), MainConfig, "")


def _check_node(node: dict, cls: type, where: str) -> None:
    hints = typing.get_type_hints(cls)
    for key, value in node.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in hints:
            close = difflib.get_close_matches(str(key), list(hints), n=1)
            hint = f"did you mean {where + '.' if where else ''}{close[0]}?" if close else f"its keys: {', '.join(hints)}"
            group = f"the {where.split('.')[0]} group" if where else "the config"
            raise ConfigError(f"{path}: not a key of {group}; {hint}")
        spec = nested_dataclass(hints[key])
        if spec is not None and isinstance(value, dict):
            _check_node(value, spec, path)


def nested_dataclass(hint) -> type | None:
    return next((c for c in (hint, *typing.get_args(hint)) if isinstance(c, type) and dataclasses.is_dataclass(c)), None)


def coerce(value: Any, hint: Any, where: str, owner: str) -> Any:
    """`value` if it fits `hint` (a numeric string becomes the number: YAML reads 1e-6 as text); else a
    ConfigError naming the key and the expected type."""
    if matches(value, hint):
        return value
    if isinstance(value, str):
        for number in (int, float):
            try:
                converted = number(value)
            except ValueError:
                continue
            if matches(converted, hint):
                return converted
    # A bare value where a list is expected (dpo.args.loss_type=ipo; TRL's loss_type is a list): the fix, spelled out.
    fix = f"; use {where}=[{value}]" if not isinstance(value, (list, dict)) and matches([value], hint) else ""
    raise ConfigError(f"{where}={value!r}: {owner} expects {describe(hint)}{fix}")


def matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, hint) or value in {m.value for m in hint}
    if origin in (list, tuple, set) or hint in (list, tuple, set):
        return isinstance(value, (list, tuple)) and (not args or all(matches(v, args[0]) for v in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True  # a library class (ParallelismConfig, ...): its own constructor checks what reaches it


def describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(describe(a) for a in args))
    if hint is type(None):
        return "null"
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in args)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        values = [str(m.value) for m in hint]
        return "one of " + ", ".join(values[:MAX_ITEMS_SHOWN]) + (", ..." if len(values) > MAX_ITEMS_SHOWN else "")
    if origin in (list, tuple, set):
        return f"a list of {describe(args[0])}" if args else "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, getattr(hint, "__name__", str(hint)))
