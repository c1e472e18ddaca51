"""SFT stage: train once per (model, data, sft settings, seed), shared by every run of a sweep."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from train.core.errors import ConfigError
from train.core.files import is_complete, mark_complete, memoized_sha256, remove_orphans
from train.data import PreferenceData
from train.data.preference import data_identity, hash_memo_dir
from train.models.loading import load_tokenizer
from train.pipeline.results import SFTResult
from train.runtime import tracking
from train.runtime.distributed import setup_process_group
from train.trainer.builders import build_sft_trainer
from train.trainer.throughput import ThroughputCallback


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


def run_sft(cfg: DictConfig, resolved: dict, base_path: str, out: Path, data: PreferenceData) -> SFTResult:
    if not cfg.sft.enabled:
        return SFTResult(path=base_path, skipped=True)
    if is_complete(out):
        print(f"sft: reusing {out} (same model, data, sft settings and seed)", flush=True)
        return SFTResult(path=str(out), reused=True)
    start = time.perf_counter()
    wandb_run = tracking.start_run(cfg, resolved, out.parent, "sft", f"sft-{out.name}")
    work = out.with_name(out.name + ".tmp")
    remove_orphans(out.parent, claim=work)  # interrupted SFT outputs, kept while a live run claims them
    extra = setup_process_group(cfg.deepspeed.config is not None, cfg.faults.collective_timeout_s)
    trainer = build_sft_trainer(cfg, base_path, data, load_tokenizer(cfg, base_path), work,
                                {**extra, "report_to": tracking.report_to(wandb_run, cfg.sft.args.get("report_to"))})
    ThroughputCallback.attach(trainer, "sft")  # tokens/s, rows/s, MFU, peak memory at each logging step
    trainer.train()
    trainer.save_model(str(work))
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        mark_complete(work)
        shutil.rmtree(out, ignore_errors=True)
        work.rename(out)  # atomic: readers see a finished directory or none
    trainer.accelerator.wait_for_everyone()
    runtime_s = time.perf_counter() - start
    tracking.finish(wandb_run)
    return SFTResult(path=str(out), train=last_logged(trainer, "loss"), runtime_s=runtime_s)
