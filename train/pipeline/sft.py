"""The shared SFT model: where it lives (one per model, data, sft settings and seed, so a sweep trains SFT once)
and what the later stages read of it. The stage that trains it is sft_stage.py: it reuses DPO's resume and
stop code, and dpo.py imports this module."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from train.core.errors import ConfigError
from train.core.files import is_complete, memoized_sha256
from train.data.preference import data_identity, hash_memo_dir


def sft_output_dir(cfg: DictConfig) -> Path:
    """SFT output keyed by everything that determines it, so a beta sweep trains SFT once and shares it.
    Local model and data paths enter by content: a moved output root (the tiny model lives under it) or a
    copied model or data directory still finds its SFT model (issue 12)."""
    inputs = {"model": model_identity(cfg), "data": data_identity(cfg), "sft": OmegaConf.to_container(cfg.sft, resolve=True)}
    inputs["seed"] = cfg.seed
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cfg.output_root).resolve() / "sft" / key


def model_identity(cfg: DictConfig) -> dict:
    """The model config with a local name_or_path as its files' sha256s (memoized by size and mtime, so a
    large model is read once per location); a hub id stays as given, its revision is in the config."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    path = Path(str(model["name_or_path"])).expanduser()
    if path.is_dir():
        memo = hash_memo_dir(cfg)
        model["name_or_path"] = {p.name: memoized_sha256(p, memo) for p in sorted(path.iterdir()) if p.is_file()}
    return model


def require_model(path: Path, stage: str) -> Path:
    if is_complete(path):
        return path
    raise ConfigError(f"no finished {stage} model at {path}: run stage={stage} (or stage=all) first")


def last_logged(trainer, key: str) -> dict:
    """The last training log line that carries `key` (TRL logs rewards/* at every logging step)."""
    for entry in reversed(trainer.state.log_history):
        if key in entry:
            return dict(entry)
    return {}
