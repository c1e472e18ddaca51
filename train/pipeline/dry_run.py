"""dry_run=true: build data, model, tokenizer and both trainer configs, print a summary, stop."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from train.config.trainer_args import build_dpo_config, build_sft_config
from train.config.validate import single_process_view
from train.data import PreferenceData
from train.models.loading import count_parameters, load_model, load_tokenizer
from train.pipeline.sft import sft_output_dir


def dry_run(cfg: DictConfig, base_path: str, data: PreferenceData, run_dir: Path) -> dict:
    tokenizer = load_tokenizer(cfg, base_path)
    model = load_model(cfg, base_path)
    with single_process_view():
        build_sft_config(cfg, run_dir / "sft-dry-run")
        build_dpo_config(cfg, run_dir / "dpo-dry-run")
    summary = {
        "dry_run": True,
        "run_dir": str(run_dir),
        "model": base_path,
        "parameters": count_parameters(model),
        "vocab": len(tokenizer),
        "rows": {k: len(getattr(data, k)) for k in ("sft", "train_pairs", "test_pairs", "eval_prompts")},
        "sft_dir": str(sft_output_dir(cfg)),
    }
    print("dry run: " + json.dumps(summary), flush=True)
    return summary
