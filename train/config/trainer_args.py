"""The one place that builds TRL's SFTConfig / DPOConfig / RewardConfig from the composed config.

The builders only compute keyword arguments and construct the dataclass: no process group, no
environment variables. Runtime settings (the CPU gloo workaround's accelerator_config) come in through
`extra` from train/runtime/distributed.py. Constructing a TrainingArguments still sets up accelerate's
device state (transformers does that in __post_init__); validation therefore builds inside
`single_process_view` (train/config/validate.py).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import typing
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from transformers.integrations import get_available_reporting_integrations
from trl import DPOConfig, RewardConfig, SFTConfig

from train.config.typecheck import coerce
from train.core.errors import ConfigError
from train.config.choices import Reference, Stage

# Keys the pipeline sets itself: taking them from `*.args` would split one setting across two places.
PIPELINE_OWNED_KEYS = {
    "output_dir": "the run directory is set by Hydra (hydra.run.dir)",
    "beta": "set beta with the beta group, e.g. beta.value=0.1",
    "deepspeed": "choose a ZeRO stage with the deepspeed group, e.g. deepspeed=zero3",
    "seed": "set the top-level seed, e.g. seed=1",
    "run_name": "set wandb.name",
    "save_strategy": "checkpoints are set by checkpoint.every_steps",
    "save_steps": "set checkpoint.every_steps",
    "save_total_limit": "set checkpoint.keep",
    "resume_from_checkpoint": "runs resume by themselves (resume.enabled)",
    "ddp_timeout": "set faults.collective_timeout_s",
}
NO_SAVING = 10**9  # save_steps when checkpoint.every_steps=0: transformers still saves at the last step


def dpo_loss_types() -> list[str]:
    """The loss types TRL's DPOTrainer implements, read from DPOConfig's own documentation of the field (TRL
    exports no list; its trainer raises "Unknown loss type" only at the first step)."""
    field = next(f for f in dataclasses.fields(DPOConfig) if f.name == "loss_type")
    return re.findall(r"`'(\w+)'`", field.metadata.get("help", ""))


def check_loss_types(args: dict[str, Any]) -> None:
    known = dpo_loss_types()
    given = args.get("loss_type", [])
    for name in [given] if isinstance(given, str) else given:
        if known and name not in known:
            raise ConfigError(f"dpo.args.loss_type: {name!r} is not a TRL loss type; choose from {', '.join(known)}")


def check_reporters(stage: str, args: dict[str, Any]) -> None:
    """Reporters besides W&B are honoured when installed; W&B itself is the wandb group's (one run per stage,
    offline fallback), so listing it here would start a second, unmanaged run."""
    given = args.get("report_to") or []
    names = [given] if isinstance(given, str) else list(given)
    names = [n for n in names if n != "none"]
    if "wandb" in names or "all" in names:
        raise ConfigError(f"{stage}.args.report_to: W&B is set by the wandb group (wandb.enabled, wandb.mode); "
                          "list only other reporters, e.g. [tensorboard]")
    missing = [n for n in names if n not in get_available_reporting_integrations()]
    if missing:
        raise ConfigError(f"{stage}.args.report_to: {', '.join(missing)} is not installed; pip install it into .venv "
                          "or remove it from report_to")
    args["report_to"] = names


def trainer_args(cfg: DictConfig, stage: str, config_cls: type) -> dict[str, Any]:
    """`<stage>.args` as a dict, each key checked against `config_cls`'s fields and each value against the
    field's type."""
    args = OmegaConf.to_container(cfg[stage].args, resolve=True)
    known = {f.name for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    for key, value in args.items():
        if key in PIPELINE_OWNED_KEYS:
            raise ConfigError(f"{stage}.args.{key}: {PIPELINE_OWNED_KEYS[key]}")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {stage}.args.{close[0]}?" if close else f"see trl.{config_cls.__name__} for valid keys"
            raise ConfigError(f"{stage}.args.{key}: not a {config_cls.__name__} setting; {hint}")
        args[key] = coerce(value, hints[key], f"{stage}.args.{key}", config_cls.__name__)
    check_reporters(stage, args)
    return args


def common_kwargs(cfg: DictConfig, args: dict[str, Any]) -> dict[str, Any]:
    common = {
        "seed": cfg.seed,
        # TRL defaults to bf16=True, which fails on CPU; follow the hardware unless the user chose.
        "bf16": args.pop("bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
        "model_init_kwargs": {
            "dtype": cfg.model.dtype,
            "attn_implementation": cfg.model.attn_implementation,
            "revision": cfg.model.revision,
        },
        "trust_remote_code": cfg.model.trust_remote_code,
        "ddp_timeout": cfg.faults.collective_timeout_s,
    }
    if cfg.deepspeed.config is not None:
        common["deepspeed"] = OmegaConf.to_container(cfg.deepspeed.config, resolve=True)
    return {**args, **common}


def with_extra(kwargs: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    """`extra` last; accelerator_config is merged key by key (the user's and the runtime's both count)."""
    extra = dict(extra or {})
    accelerator_config = {**kwargs.pop("accelerator_config", {}), **extra.pop("accelerator_config", {})}
    if accelerator_config:
        kwargs["accelerator_config"] = accelerator_config
    return {**kwargs, **extra}


def construct(config_cls: type, stage: str, kwargs: dict[str, Any]):
    try:
        return config_cls(**kwargs)
    except (ValueError, TypeError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{stage}.args: {config_cls.__name__} rejected the settings: {first_line}") from err


STAGE_CONFIGS = {Stage.sft: SFTConfig, Stage.dpo: DPOConfig, Stage.reward: RewardConfig}


def stage_kwargs(cfg: DictConfig, stage: Stage) -> dict[str, Any]:
    """The keyword arguments of `stage`'s TRL config, each key and value checked: all of them but output_dir and
    what the runtime adds (process group, report_to)."""
    args = trainer_args(cfg, stage, STAGE_CONFIGS[stage])
    if stage == Stage.dpo:
        check_loss_types(args)
    kwargs = common_kwargs(cfg, args)
    if stage == Stage.dpo:
        kwargs["beta"] = cfg.beta.value
        kwargs["precompute_ref_log_probs"] = cfg.dpo.reference == Reference.precomputed
    # Checkpoints alike in every stage, so each resumes after a preemption; the one transformers saves at SFT's
    # last step is dropped by the SFT stage (NoCheckpointAtEnd): its final model is saved right after.
    kwargs.update(checkpoint_kwargs(cfg))
    return kwargs


def build_config(stage: Stage, kwargs: Mapping[str, Any], output_dir: Path, extra: dict[str, Any] | None = None):
    # A deep copy: TrainingArguments and the trainers may change the nested dicts they are given.
    return construct(STAGE_CONFIGS[stage], stage,
                     with_extra({**copy.deepcopy(dict(kwargs)), "output_dir": str(output_dir)}, extra))


@dataclasses.dataclass(frozen=True)
class StageArgs:
    """One stage's trainer settings as the start check accepted them, and the numbers the pipeline reads before
    its trainer exists (the start checks, dry_run's plan), TRL's defaults filled in. The TRL config built to check
    them is not kept: constructing a TrainingArguments sets up accelerate's device state (here in a single-process
    view) and registers its DeepSpeed config globally, where transformers' ZeRO-3 checks read it while models
    load. The trainer's own config is constructed from these kwargs in the process's real state, with its
    output_dir and the runtime's settings; keys and values are not checked again."""

    stage: Stage
    kwargs: Mapping[str, Any]
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    num_train_epochs: float
    max_steps: int
    warmup_steps: float
    learning_rate: float
    max_length: int | None

    @classmethod
    def checked(cls, cfg: DictConfig, stage: Stage) -> "StageArgs":
        """Raises ConfigError for what the keys, their types, or TRL and transformers refuse. Build inside
        single_process_view (train/config/validate.py): no process group is started."""
        kwargs = stage_kwargs(cfg, stage)
        config = build_config(stage, kwargs, Path("/nonexistent/validate-only"))
        numbers = {f.name: getattr(config, f.name, None) for f in dataclasses.fields(cls)[2:]}
        return cls(stage, MappingProxyType(kwargs), **numbers)

    def build(self, output_dir: Path, extra: dict[str, Any] | None = None):
        """The config the trainer runs with."""
        return build_config(self.stage, self.kwargs, output_dir, extra)


def checkpoint_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """Saved every `checkpoint.every_steps` steps and at the end (transformers saves at the last step under
    "steps"); rotation is train/trainer/checkpoint.py's, after a newer checkpoint is complete."""
    return {"save_strategy": "steps", "save_steps": cfg.checkpoint.every_steps or NO_SAVING, "save_total_limit": None}
