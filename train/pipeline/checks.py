"""Every start-up check of a composed config, each run by the layer that owns the registry it checks."""

from __future__ import annotations

from omegaconf import DictConfig

from train import data
from train.config.validate import validate
from train.models.loading import resolve_chat_template
from train.runtime.hub import check_push_to_hub
from train.runtime.launcher import check_launcher_settings
from train.trainer import beta


def check_config(cfg: DictConfig) -> None:
    """Raises ConfigError (one line) for anything the run would fail on later; writes nothing."""
    check_launcher_settings()
    beta.check(cfg.beta)
    data.check_config(cfg)
    validate(cfg)
    if cfg.model.chat_template is not None:
        resolve_chat_template(cfg.model.chat_template)
    check_push_to_hub(cfg)
