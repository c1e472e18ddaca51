"""A stage's TRL config straight from a composed config, checked as it is built, without the rest of the start
check: for the tests of single trainer settings."""

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from train.config.choices import Stage
from train.config.trainer_args import build_config, stage_kwargs


def trl_config(cfg: DictConfig, stage: Stage, output_dir: Path, extra: dict[str, Any] | None = None):
    return build_config(stage, stage_kwargs(cfg, stage), output_dir, extra)
