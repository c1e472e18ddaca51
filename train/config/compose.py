"""Composing the Hydra config from conf/: the schema and resolvers registered once, and composition
errors as one line (Hydra's own are multi-line)."""

from __future__ import annotations

import hashlib
import itertools
import re
from pathlib import Path
from typing import Optional

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from train.config.overrides import appended, check_group_choices, merge_error, missing_key
from train.config.schema import MainConfig
from train.config.typecheck import check_known_keys
from train.core.errors import ConfigError

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


MAX_RUN_NAME = 96  # characters; file names stop at 255 bytes, and a run name also names W&B runs
UNSAFE = re.compile(r"[^A-Za-z0-9._=,+\-]")  # what else could nest directories or need quoting in a shell


def run_name(override_dirname: str, name: Optional[str] = None) -> str:
    """The run directory's name: `name=` when given, else the overrides (`beta.value=0.2,debug=fast`).
    Deterministic (every rank, every restart); one directory level; a path value becomes its last part plus
    a hash of the whole path; past MAX_RUN_NAME characters, a readable prefix plus a hash of all overrides."""
    if name:
        return UNSAFE.sub("_", str(name)).lstrip(".")[:MAX_RUN_NAME] or "default"
    if not override_dirname:
        return "default"
    parts = []
    for item in override_dirname.split(","):
        key, sep, value = item.partition("=")
        if "/" in value or "\\" in value:
            value = f"{Path(value.rstrip('/')).name}-{digest(value, 6)}"
        parts.append(f"{key}{sep}{value}")
    readable = UNSAFE.sub("_", ",".join(parts)).lstrip(".")
    if len(readable) <= MAX_RUN_NAME:
        return readable
    return f"{readable[:MAX_RUN_NAME - 13].rstrip(',_')}-{digest(override_dirname, 12)}"


def digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def register() -> None:
    """The typed schema (`main_schema` in conf/config.yaml's defaults) and the `run_name` resolver."""
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name)
    ConfigStore.instance().store(name="main_schema", node=MainConfig)


def compose(overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    """The config `python -m train <overrides>` runs with; a composition error is a one-line ConfigError."""
    return compose_overrides(overrides, return_hydra_config)[0]


def compose_overrides(overrides: list[str], return_hydra_config: bool = False) -> tuple[DictConfig, set[str]]:
    """The config and the keys it lacks that were given without `+` (`dpo.args.push_to_hub=true`): those are
    composed as `+key=value`, so the checks after composing accept a valid TRL setting and name a typo's
    nearest key, and Hydra must be given them the same way (train/config/overrides.py with_appended)."""
    register()
    overrides, added = list(overrides), set()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            check_group_choices(overrides, "config")
            while True:
                try:
                    cfg = hydra_compose(config_name="config", overrides=overrides,
                                        return_hydra_config=return_hydra_config)
                    # A typo of our own keys is named now, before the slower checks import TRL.
                    if added and not return_hydra_config:
                        check_known_keys(cfg)
                    return cfg, added
                except ConfigCompositionException as err:
                    key = missing_key(err)
                    if key is None or key in added:
                        raise
                    added.add(key)
                    overrides = appended(overrides, key)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(one_line(err)) from err


def sweep_combinations(overrides: list[str], limit: int = 64) -> list[list[str]]:
    """The override lists a `-m` sweep will run (its first `limit`), for checking before Hydra writes anything.
    Sweeps that need Hydra's config loader (glob) or a sweeper's search space (interval) are left to Hydra."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(one_line(err)) from err
    choices = []
    for override in parsed:
        if not override.is_sweep_override():
            choices.append([override.input_line])
            continue
        try:
            values = list(override.sweep_string_iterator())
        except HydraException:
            continue
        choices.append([f"{override.get_key_element()}={v}" for v in values])
    return [list(c) for c in itertools.islice(itertools.product(*choices), limit)]


def one_line(err: Exception) -> str:
    merging = merge_error(err)
    if merging is not None:
        return merging
    text = " ".join(str(err).split())
    if "Could not find" in text and "Available options" in text:
        head, options = text.split("Available options in", 1)
        options = options.split(" Config search path:")[0]  # the search path is Hydra's detail, not the user's
        return f"{head.replace('In ' + repr('config') + ': ', '').strip()}; available options in{options}"
    return text
