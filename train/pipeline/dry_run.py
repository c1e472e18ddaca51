"""dry_run=true: build data, model, tokenizer and both trainer configs, print what the run would do, stop."""

from __future__ import annotations

import json
from pathlib import Path

from train.config.choices import Stage
from train.console.banners import optimizer_steps, plan_warnings
from train.core.ranks import world_size
from train.data import PreferenceData
from train.data.validation import token_ids
from train.models.loading import count_parameters, load_model, load_tokenizer
from train.pipeline.sft import sft_output_dir
from train.trainer.start_plan import StartPlan

TOKEN_BATCH = 512


def token_count(tokenizer, dataset, responses: tuple[str, ...], conversational: bool, max_length) -> int:
    """Tokens the trainer will process (each sequence capped at max_length), prompt counted per response."""
    total = 0
    for start in range(0, len(dataset), TOKEN_BATCH):
        batch = dataset[start:start + TOKEN_BATCH]
        _, full = token_ids(tokenizer, batch["prompt"], [batch[k] for k in responses], conversational, tokenizer.eos_token)
        total += sum(min(len(ids), max_length or len(ids)) for column in full for ids in column)
    return total


def dry_run(plan: StartPlan, base_path: str, data: PreferenceData, run_dir: Path) -> dict:
    cfg = plan.config
    tokenizer = load_tokenizer(cfg.model, base_path, cfg.data.conversational)
    model = load_model(cfg.model, base_path)
    checked = plan.args  # the settings as the start check built them: batch sizes, steps, max_length
    sft_args, dpo_args = checked["sft"], checked["dpo"]
    processes, conversational = world_size(), cfg.data.conversational
    summary = {
        "dry_run": True,
        "run_dir": str(run_dir),
        "model": base_path,
        "parameters": count_parameters(model),
        "vocab": len(tokenizer),
        "rows": {k: len(getattr(data, k)) for k in ("sft", "train_pairs", "test_pairs", "eval_prompts")},
        "processes": processes,
        "sft": {**optimizer_steps(sft_args, len(data.sft), processes), "enabled": cfg.sft.enabled,
                "tokens_per_epoch": token_count(tokenizer, data.sft, ("completion",), conversational, sft_args.max_length)},
        "dpo": {**optimizer_steps(dpo_args, len(data.train_pairs), processes), "enabled": cfg.dpo.enabled,
                "tokens_per_epoch": token_count(tokenizer, data.train_pairs, ("chosen", "rejected"), conversational,
                                                dpo_args.max_length)},
        "sft_dir": str(sft_output_dir(cfg)),
    }
    for stage in (Stage.sft, Stage.dpo):
        s = summary[stage]
        for line in plan_warnings(stage, s, summary["rows"]["sft" if stage == Stage.sft else "train_pairs"]):
            print(line, flush=True)
        print(f"plan: {stage}: {s['optimizer_steps']} optimizer steps of {s['global_batch']} "
              f"{'pairs' if stage == Stage.dpo else 'rows'} on {processes} process(es), {s['tokens_per_epoch']} tokens "
              f"per epoch{'' if s['enabled'] else ' (stage off)'}", flush=True)
    print("dry run: " + json.dumps(summary), flush=True)
    return summary
