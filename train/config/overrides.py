"""Command-line overrides before Hydra composes them: a config group given a value that is not one of its
options, a key the config lacks given without `+`, a value of the wrong type. Hydra answers these with a
traceback (`beta=0.2`: "Config group override must be a string or a list") or with a message that names
no fix; here each becomes one line that says what to type instead.
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override

from train.config.schema import MainConfig
from train.config.typecheck import nested_dataclass
from train.core.errors import ConfigError

# Under these a key the config lacks stays Hydra's refusal: nothing of ours checks their keys (DeepSpeed's JSON
# config, Hydra's own settings), so a typo given without `+` would pass unnoticed.
UNCHECKED = ("deepspeed.config.", "hydra.")
MISSING_KEY = re.compile(r"^Could not override '([^']+)'")
# OmegaConf's words for a value that does not convert to a schema field's type.
TYPE_WORDS = {"Float": "a float", "Integer": "an integer", "Boolean": "true or false"}


def plain_overrides(overrides: list[str]) -> list[Override]:
    """The `key=value` overrides: no `+`, `++` or `~`, no `@package`."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [o for o in parsed if not o.is_add() and not o.is_force_add() and not o.is_delete() and o.package is None]


def check_group_choices(overrides: list[str], config_name: str) -> None:
    """A config group (beta, model, data, deepspeed, ...) given something that is not one of its options: one line
    that lists the options and, where the value plainly belongs to a key of the group, names that key."""
    loader = GlobalHydra.instance().config_loader()
    groups = set(loader.list_groups("")) - {"hydra"}
    for override in plain_overrides(overrides):
        group = override.key_or_group
        if group not in groups or override.is_sweep_override():
            continue
        value = override.value()
        values = value if isinstance(value, list) else [value]
        options = loader.get_group_options(group, config_name=config_name, overrides=list(overrides))
        if all(isinstance(v, str) and v in options for v in values):
            continue
        text = override.input_line.partition("=")[2]  # as typed: `false`, not Python's False
        hint = group_hint(group, value, text, options)
        raise ConfigError(f"{group} is a config group (options: {', '.join(options)}); {hint}")


def group_hint(group: str, value, text: str, options: list[str]) -> str:
    """What the user most likely meant by `<group>=<value>`."""
    if value is None:
        return f"to use none of them, leave {group} out or remove it with ~{group}"
    fields = group_fields(group)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(value, bool) and "enabled" in fields:
        return f"use {group}.enabled={text}"
    if number and "value" in fields:
        return f"use {group}.value={text}"
    numbered = [o for o in options if number and re.fullmatch(rf"[a-z_]*{re.escape(text)}", o)]
    if numbered:
        return f"use {group}={numbered[0]}"
    if isinstance(value, str) and looks_like_location(value):
        if group == "model":
            return (f"to train the model at {value}, write conf/model/mine.yaml (name_or_path: {value}, see "
                    f"conf/model/qwen2_5_0_5b.yaml) and run model=mine recipe=real_model")
        if "source" in fields and "custom" in options:
            return f"use {group}=custom {group}.source={value}"
        if "name_or_path" in fields:
            # The option that loads a model by name (judge=reward_model), where the group has one.
            named = [o for o in options if o.endswith("model")] or ["<option>"]
            return f"use {group}={named[0]} {group}.name_or_path={value}"
    close = difflib.get_close_matches(text, options, n=1) if isinstance(value, str) else []
    if close:
        return f"did you mean {group}={close[0]}?"
    return f"choose one, or add conf/{group}/{text}.yaml for one of your own"


def group_fields(group: str) -> set[str]:
    spec = nested_dataclass(typing.get_type_hints(MainConfig).get(group))
    return set(typing.get_type_hints(spec)) if spec is not None else set()


def looks_like_location(value: str) -> bool:
    """A path or a hub id (`org/name`), not an option name."""
    return "/" in value or "\\" in value or value.startswith(("~", ".")) or Path(value).expanduser().exists()


def missing_key(err: Exception) -> str | None:
    """The key of Hydra's "Could not override 'KEY'" when the checks after composing can judge it (a key of our
    schema, of `*.args` or of data.options): given as `+KEY=value`, a typo gets a did-you-mean and a valid TRL
    setting that the YAML does not list is accepted."""
    found = MISSING_KEY.match(str(err))
    if found is None or found.group(1).startswith(UNCHECKED):
        return None
    return found.group(1)


def appended(overrides: list[str], key: str) -> list[str]:
    """`overrides` with the plain override of `key` given as `+key=value`."""
    plain = {o.input_line for o in plain_overrides(overrides) if o.key_or_group == key}
    return [f"+{o}" if o in plain else o for o in overrides]


def with_appended(argv: list[str], keys: set[str]) -> list[str]:
    """The command line with the plain overrides of `keys` given as `+key=value` (sweeps included), for Hydra."""
    plain = {o.input_line for o in plain_overrides([a for a in argv if is_override(a)]) if o.key_or_group in keys}
    return [f"+{a}" if a in plain else a for a in argv]


INSPECT_FLAGS = ("-c", "--cfg", "-i", "--info")  # Hydra prints the config (or its sources) and runs nothing


def is_inspect_flag(arg: str) -> bool:
    return arg in INSPECT_FLAGS or arg.startswith(("--cfg=", "--info="))


def command_overrides(argv: list[str]) -> list[str] | None:
    """The overrides of a `python -m train` command line that are composed before Hydra runs; None where Hydra
    answers by itself (--help, --hydra-help, -p, --config-name). Hydra's own settings (launcher, sweeper) are
    left to Hydra, except where it finds config groups (hydra.searchpath)."""
    if any(a in ("-m", "--multirun") for a in argv) and any(map(is_inspect_flag, argv)):
        raise ConfigError("-m cannot be combined with --cfg or --info (Hydra runs one mode at a time): drop -m to "
                          "see the config of one job of the sweep")
    if any(a.startswith("-") and a not in ("-m", "--multirun") and not is_inspect_flag(a) for a in argv):
        return None
    return [a for a in argv if is_override(a) and (a.startswith("hydra.searchpath=") or not a.startswith(
        ("hydra.", "hydra/", "+hydra")))]


def is_override(arg: str) -> bool:
    """A `key=value` (or `~key`) argument, not a flag or a flag's value (`--cfg job`)."""
    return not arg.startswith("-") and ("=" in arg or arg.startswith("~"))


def merge_error(err: Exception) -> str | None:
    """Hydra's "Error merging override beta.value=abc" names no reason; its cause does (OmegaConf's conversion)."""
    text, cause = str(err), err.__cause__
    if not text.startswith("Error merging override ") or cause is None:
        return None
    override = text.removeprefix("Error merging override ").strip()
    reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    converted = re.search(r"could not be converted to (\w+)", reason)
    if converted:
        return f"{override}: expected {TYPE_WORDS.get(converted.group(1), converted.group(1).lower())}"
    choice = re.search(r"Invalid value '.*', expected one of \[(.*)\]", reason)
    if choice:  # an Enum field (train/config/choices.py)
        return f"{override}: choose one of {choice.group(1)}"
    if "is not a valid bool" in reason:
        return f"{override}: expected true or false"
    return f"{override}: {reason}"
