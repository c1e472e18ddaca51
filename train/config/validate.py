"""Checks of the composed config that its types cannot express. Every check raises ConfigError with one
line that names the key and says what to change; the entry points print it without a traceback.

Choices that a registry defines (beta schedules, judges, data sources) are checked by the layer that holds
the registry; train/pipeline/checks.py runs them all.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from train import seams
from train.config.choices import BetaSchedule, Reference, Stage
from train.config.trainer_args import STAGE_CONFIGS, StageArgs
from train.config.typecheck import check_known_keys
from train.core.errors import ConfigError
from train.core.paths import looks_like_local_path

# A key whose last word names a secret: hub_token, api_key, key, apikey, secret, password, passwd.
SECRET_KEY = re.compile(r"(^|[._-])(token|key|apikey|secret|password|passwd)$", re.IGNORECASE)
# What a launcher (accelerate, torchrun, SLURM workers) exports: with these set, building a
# TrainingArguments starts a process group.
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                      "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_DEEPSPEED")


def validate(cfg: DictConfig) -> dict[str, StageArgs]:
    """Returns each stage's checked trainer settings (sft, dpo, reward), for the run to build its trainers from."""
    check_no_secrets(OmegaConf.to_container(cfg, resolve=False), "")
    check_known_keys(cfg)
    check_beta(cfg.beta)
    if cfg.dpo.reference == Reference.precomputed and cfg.dpo.args.get("sync_ref_model"):
        raise ConfigError("dpo.reference=precomputed with dpo.args.sync_ref_model=true: a synced reference cannot be precomputed; pick one")
    if cfg.dpo.reference != Reference.model and cfg.dpo.args.get("precompute_ref_log_probs") is not None:
        raise ConfigError("dpo.args.precompute_ref_log_probs: remove it; choose dpo.reference=precomputed instead")
    check_deepspeed(cfg.deepspeed)
    name = cfg.model.name_or_path
    if cfg.model.tiny is None and looks_like_local_path(name) and not Path(name).is_dir():
        raise ConfigError(f"model.name_or_path={name}: no such directory; give a local model directory or a hub id")
    if cfg.checkpoint.every_steps < 0 or cfg.checkpoint.keep < 1:
        raise ConfigError("checkpoint.every_steps must be >= 0 and checkpoint.keep >= 1")
    if cfg.faults.max_bad_steps < 1 or cfg.faults.collective_timeout_s < 10:
        raise ConfigError("faults.max_bad_steps must be >= 1 and faults.collective_timeout_s >= 10")
    if cfg.eval.enabled and cfg.eval.num_prompts <= 0:
        raise ConfigError(f"eval.num_prompts={cfg.eval.num_prompts}: must be > 0, or set eval.enabled=false")
    check_data_fractions(cfg.data)
    # The trainers' real configs, DeepSpeed dict included: what TRL and transformers refuse, refused now. The first
    # of them starts DeepSpeed's comm backend, which would compile an op that training never uses.
    seams.skip_deepspeed_shm_comm_build()
    with single_process_view():
        checked = {stage: StageArgs.checked(cfg, stage) for stage in STAGE_CONFIGS}
    for stage, args in checked.items():
        if cfg[stage].enabled:
            check_training_length(stage, args)
    if cfg.stage == Stage.reward and not cfg.reward.enabled:
        raise ConfigError("stage=reward with reward.enabled=false: nothing to train; set reward.enabled=true")
    return checked


def check_data_fractions(data: DictConfig) -> None:
    # The held-out slice takes at least one prompt and leaves at least one (train/data/build.py hold_out), so
    # 0 is no "no split" and 1.5 left one training prompt: only a share strictly between 0 and 1 means what it says.
    if not 0 < data.test_fraction < 1:
        raise ConfigError(f"data.test_fraction={data.test_fraction}: the share of prompts held out for testing must be "
                          "between 0 and 1 (exclusive), e.g. data.test_fraction=0.05")
    if not 0 <= data.max_drop_fraction <= 1:
        raise ConfigError(f"data.max_drop_fraction={data.max_drop_fraction}: a share of pairs, must be between 0 and 1, "
                          "e.g. data.max_drop_fraction=0.05")


TYPICAL_LEARNING_RATE = {"sft": "1e-5", "dpo": "5e-7"}  # as in conf/recipe/real_model.yaml


def check_training_length(stage: str, args) -> None:
    """Values TRL and transformers accept but that train nothing (learning_rate=0 trained the whole run
    unchanged, and warned only at the end) or fail at the first step (a negative learning rate)."""
    if args.learning_rate <= 0:
        typical = f" (pretrained models: about {TYPICAL_LEARNING_RATE[stage]})" if stage in TYPICAL_LEARNING_RATE else ""
        raise ConfigError(f"{stage}.args.learning_rate={args.learning_rate:g}: must be > 0{typical}")
    if args.max_steps <= 0 and args.num_train_epochs <= 0:  # max_steps <= 0 means "count by epochs"
        raise ConfigError(f"{stage}.args.num_train_epochs={args.num_train_epochs:g}: must be > 0 (or set "
                          f"{stage}.args.max_steps=<steps> > 0)")


def check_beta(beta: DictConfig) -> None:
    for key in ("value", "final"):
        value = beta[key]
        if value is not None and value <= 0:
            raise ConfigError(f"beta.{key}={value}: beta must be > 0 (typical 0.05-0.5)")
    if beta.schedule not in (BetaSchedule.constant, BetaSchedule.adaptive) and beta.final is None:  # only step schedules end somewhere
        raise ConfigError(f"beta.final is required by beta={beta.schedule}: set beta.final=<value>")


def check_deepspeed(ds: DictConfig) -> None:
    if ds.stage not in (0, 1, 2, 3):
        raise ConfigError(f"deepspeed.stage={ds.stage}: ZeRO stages are 0, 1, 2 and 3")
    if (ds.stage == 0) != (ds.config is None):
        raise ConfigError("deepspeed.stage and deepspeed.config disagree: pick a preset, e.g. deepspeed=zero3")
    if ds.config is not None:
        inner = OmegaConf.select(ds.config, "zero_optimization.stage")
        if inner != ds.stage:
            raise ConfigError(f"deepspeed.config.zero_optimization.stage={inner} but deepspeed.stage={ds.stage}: make them equal")
        if "train_batch_size" in ds.config:
            raise ConfigError("deepspeed.config.train_batch_size: remove it; it is derived from the batch size and world size at run time")


def check_override_secrets(overrides: list[str]) -> None:
    """The same rule on raw `key=value` overrides, before Hydra writes them anywhere (multirun.yaml, a
    directory name)."""
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if sep and SECRET_KEY.search(key) and value.strip() not in ("", "null", "None"):
            raise ConfigError(f"{key}: secrets must not be in the config; set it in the environment (e.g. HF_TOKEN, WANDB_API_KEY)")


def check_no_secrets(node: Any, where: str) -> None:
    # Secrets come from the environment only: anything in the config is written to disk and to W&B.
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if SECRET_KEY.search(str(key)) and value not in (None, ""):
                raise ConfigError(f"{path}: secrets must not be in the config; set it in the environment (e.g. HF_TOKEN, WANDB_API_KEY)")
            check_no_secrets(value, path)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_no_secrets(value, f"{where}[{i}]")


@contextmanager
def single_process_view() -> Iterator[None]:
    """The launcher's variables hidden while the block runs: a TrainingArguments built inside sees one
    process and starts no process group, so every rank can validate before the real setup."""
    saved = {k: os.environ.pop(k) for k in LAUNCHER_VARIABLES if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)
