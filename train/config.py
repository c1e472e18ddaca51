"""Validation of the composed config and the one place that builds TRL's SFTConfig / DPOConfig.

Every check raises ConfigError with one line that names the key and says what to change; the entry
point prints it without a traceback (train/main.py).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

STAGES = ("all", "sft", "dpo", "eval")
BETA_SCHEDULES = ("constant", "linear", "cosine")
JUDGES = ("sentiment",)
REFERENCE_PLACEMENTS = ("model", "precomputed", "lora")
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
SECRET_KEY = re.compile(r"(token|api_key|apikey|secret|password)$", re.IGNORECASE)


class ConfigError(ValueError):
    """A problem with the user's config; its message is one line that says what to change."""


def _run_name(override_dirname: str) -> str:
    # One directory level: a path in an override (model.name_or_path=/a/b) must not nest directories.
    return override_dirname.replace("/", "_") or "default"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", _run_name)


def validate(cfg: DictConfig) -> None:
    """Cross-field checks that the schema's types cannot express."""
    _check_no_secrets(OmegaConf.to_container(cfg, resolve=False), "")
    if cfg.stage not in STAGES:
        raise ConfigError(f"stage={cfg.stage}: choose one of {', '.join(STAGES)}")
    if cfg.beta.schedule not in BETA_SCHEDULES:
        raise ConfigError(f"beta.schedule={cfg.beta.schedule}: choose one of {', '.join(BETA_SCHEDULES)}")
    for key in ("value", "final"):
        value = cfg.beta[key]
        if value is not None and value <= 0:
            raise ConfigError(f"beta.{key}={value}: beta must be > 0 (typical 0.05-0.5)")
    if cfg.beta.schedule != "constant" and cfg.beta.final is None:
        raise ConfigError(f"beta.final is required by beta={cfg.beta.schedule}: set beta.final=<value>")
    if cfg.data.judge is not None and cfg.data.judge not in JUDGES:
        raise ConfigError(f"data.judge={cfg.data.judge}: choose one of {', '.join(JUDGES)} or null")
    if cfg.data.name == "synthetic" and cfg.data.synthetic is None:
        raise ConfigError("data.synthetic is required by data=synthetic: restore it from conf/data/synthetic.yaml")
    if cfg.dpo.reference not in REFERENCE_PLACEMENTS:
        raise ConfigError(f"dpo.reference={cfg.dpo.reference}: choose one of {', '.join(REFERENCE_PLACEMENTS)}")
    if cfg.dpo.reference == "precomputed" and cfg.dpo.args.get("sync_ref_model"):
        raise ConfigError("dpo.reference=precomputed with dpo.args.sync_ref_model=true: a synced reference cannot be precomputed; pick one")
    if cfg.dpo.reference != "model" and cfg.dpo.args.get("precompute_ref_log_probs") is not None:
        raise ConfigError("dpo.args.precompute_ref_log_probs: remove it; choose dpo.reference=precomputed instead")
    ds = cfg.deepspeed
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
    if cfg.model.tiny is None and _looks_like_path(cfg.model.name_or_path) and not Path(cfg.model.name_or_path).is_dir():
        raise ConfigError(f"model.name_or_path={cfg.model.name_or_path}: no such directory; give a local model directory or a hub id")
    if cfg.checkpoint.every_steps < 0 or cfg.checkpoint.keep < 1:
        raise ConfigError("checkpoint.every_steps must be >= 0 and checkpoint.keep >= 1")
    if cfg.faults.max_bad_steps < 1 or cfg.faults.collective_timeout_s < 10:
        raise ConfigError("faults.max_bad_steps must be >= 1 and faults.collective_timeout_s >= 10")
    if cfg.eval.enabled and cfg.eval.num_prompts <= 0:
        raise ConfigError(f"eval.num_prompts={cfg.eval.num_prompts}: must be > 0, or set eval.enabled=false")
    build_sft_config(cfg, Path("/nonexistent/validate-only"), with_deepspeed=False)
    build_dpo_config(cfg, Path("/nonexistent/validate-only"), with_deepspeed=False)


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.count("/") != 1


def _check_no_secrets(node: Any, where: str) -> None:
    # Secrets come from the environment only: anything in the config is written to disk and to W&B.
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if SECRET_KEY.search(str(key)) and value not in (None, ""):
                raise ConfigError(f"{path}: secrets must not be in the config; set it in the environment (e.g. HF_TOKEN, WANDB_API_KEY)")
            _check_no_secrets(value, path)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_no_secrets(value, f"{where}[{i}]")


def _trainer_args(cfg: DictConfig, stage: str, config_cls: type) -> dict[str, Any]:
    args = OmegaConf.to_container(cfg[stage].args, resolve=True)
    known = {f.name for f in dataclasses.fields(config_cls)}
    for key in args:
        if key in PIPELINE_OWNED_KEYS:
            raise ConfigError(f"{stage}.args.{key}: {PIPELINE_OWNED_KEYS[key]}")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {stage}.args.{close[0]}?" if close else f"see trl.{config_cls.__name__} for valid keys"
            raise ConfigError(f"{stage}.args.{key}: not a {config_cls.__name__} setting; {hint}")
    return args


def _common_args(cfg: DictConfig, args: dict[str, Any], output_dir: Path, with_deepspeed: bool) -> dict[str, Any]:
    import torch

    common = {
        "output_dir": str(output_dir),
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
    # Validation leaves DeepSpeed and the process group out: TrainingArguments would start them.
    if with_deepspeed:
        from train.distributed import setup_process_group

        if cfg.deepspeed.config is not None:
            common["deepspeed"] = OmegaConf.to_container(cfg.deepspeed.config, resolve=True)
        extra = setup_process_group(cfg.deepspeed.config is not None, cfg.faults.collective_timeout_s)
        accelerator_config = {**args.pop("accelerator_config", {}), **extra.pop("accelerator_config", {})}
        if accelerator_config:
            common["accelerator_config"] = accelerator_config
        common.update(extra)
    return {**args, **common}


def _build(config_cls: type, stage: str, kwargs: dict[str, Any]):
    try:
        return config_cls(**kwargs)
    except (ValueError, TypeError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{stage}.args: {config_cls.__name__} rejected the settings: {first_line}") from err


def build_sft_config(cfg: DictConfig, output_dir: Path, with_deepspeed: bool = True):
    from trl import SFTConfig

    args = _trainer_args(cfg, "sft", SFTConfig)
    kwargs = _common_args(cfg, args, output_dir, with_deepspeed)
    kwargs["save_strategy"] = "no"  # SFT is short and shared by a sweep; only its final model is kept
    return _build(SFTConfig, "sft", kwargs)


def build_dpo_config(cfg: DictConfig, output_dir: Path, with_deepspeed: bool = True):
    from trl import DPOConfig

    args = _trainer_args(cfg, "dpo", DPOConfig)
    kwargs = _common_args(cfg, args, output_dir, with_deepspeed)
    kwargs["beta"] = cfg.beta.value
    kwargs["precompute_ref_log_probs"] = cfg.dpo.reference == "precomputed"
    every = cfg.checkpoint.every_steps
    # Saved every `every` steps and at the end (transformers saves at the last step under "steps").
    kwargs.update(save_strategy="steps", save_steps=every or 10**9, save_total_limit=None)
    return _build(DPOConfig, "dpo", kwargs)
