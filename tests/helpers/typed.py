"""The typed config a run hands its functions (the start plan's `config`), for tests that call them directly."""

from omegaconf import DictConfig, OmegaConf

from train.config.compose import compose
from train.config.schema import MainConfig


def typed(cfg: DictConfig | list[str]) -> MainConfig:
    """`cfg` (or the config composed from these overrides) as the schema's dataclasses, as the start check
    converts it (train/pipeline/checks.py), without the checks."""
    return OmegaConf.to_object(compose(cfg) if isinstance(cfg, list) else cfg)
