"""Every start-up check of a composed config, each run by the layer that owns the registry it checks."""

from __future__ import annotations

from omegaconf import DictConfig

from train import data
from train.config.validate import validate
from train.models import adapters, judges
from train.models.loading import check_attention, check_model_directory, resolve_chat_template
from train.pipeline import recommend
from train.pipeline.memory_check import check_memory_plan
from train.runtime.hub import check_push_to_hub
from train.runtime.launcher import check_launcher_settings
from train.trainer import beta, layouts


def check_config(cfg: DictConfig) -> None:
    """Raises ConfigError (one line) for anything the run would fail on later; writes nothing."""
    check_launcher_settings()
    beta.check(cfg.beta, cfg.dpo.args)
    data.check_config(cfg)
    judges.check_config(cfg)
    validate(cfg)
    check_attention(cfg.model)
    check_model_directory(cfg.model)
    layouts.check(cfg)
    recommend.check(cfg.search.metric, cfg.report.kl_budget)
    adapters.check_lora_settings(cfg)
    if cfg.model.chat_template is not None:
        resolve_chat_template(cfg.model.chat_template)
    check_push_to_hub(cfg)
    check_memory_plan(cfg)  # last: on GPUs only, before any weights load
