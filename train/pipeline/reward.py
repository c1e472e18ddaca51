"""Reward model stage (stage=reward; stage=all does not run it): TRL's RewardTrainer on the data group's training
pairs, starting from the SFT model (trained here first when its cache has none, else reused, as stage=dpo does) or
from the base model with sft.enabled=false. Checkpoints, preemption and exact resume are SFT's and DPO's
(train/pipeline/resumable.py), in `<run dir>/reward/`.

The trained classifier and its tokenizer are saved to `<run dir>/reward_model/` and marked COMPLETE. Its held-out
accuracy is measured the way `judge=reward_model judge.name_or_path=<run dir>/reward_model` would use it: the
directory is loaded by the judge's own loader and scores each test pair's chosen and rejected response.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from train.config.choices import JudgeKind
from train.config.schema import JudgeConfig, MainConfig
from train.console.banners import announce_training
from train.core.files import COMPLETE, mark_complete
from train.core.ranks import is_main_process
from train.data import PreferenceData
from train.models.judges import load_reward_model, response_text
from train.models.loading import load_tokenizer
from train.models.sampling import win_rate
from train.pipeline.results import add_sft
from train.pipeline.resumable import run_signature, train_resumably
from train.pipeline.sft import keep_run_id, require_model, run_sft
from train.runtime import faults, tracking
from train.runtime.distributed import setup_process_group
from train.trainer.builders import build_reward_trainer, release
from train.trainer.checkpoint import prune_at_end
from train.trainer.start_plan import StartPlan

REWARD_MODEL_DIR = "reward_model"  # <run dir>/reward_model/: the classifier and its tokenizer
WORK_DIR = "reward"  # <run dir>/reward/: the stage's checkpoints


@dataclass
class RewardResult:
    path: str
    held_out_accuracy: Optional[float]  # test pairs where score(chosen) > score(rejected), ties half (main process)
    num_pairs: int  # the accuracy's sample size
    steps: int
    runtime_s: float
    start_model: str  # the SFT or base model the classifier was initialized from
    train: dict  # the last logged training record (loss, accuracy, margin)
    resumed_from: Optional[str]
    wandb: dict

    def record(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("path", "held_out_accuracy", "num_pairs", "steps", "runtime_s",
                                              "start_model", "train", "resumed_from", "wandb")}


def run_reward_stage(plan: StartPlan, base_path: str, sft_path: Path, data: PreferenceData,
                     run_dir: Path, run_name: str, results: dict) -> RewardResult:
    """SFT if its cache lacks the model (recorded in results only when trained here or not yet recorded, so a
    finished run's SFT history stays), then the reward model; results gets `reward` and runtime_s.reward."""
    cfg = plan.config
    sft = run_sft(plan, base_path, sft_path, data, run_dir)  # skipped with sft.enabled=false; reused if cached
    if sft.runtime_s is not None or "sft" not in results:
        add_sft(results, sft)
    start = str(require_model(sft_path, "sft")) if cfg.sft.enabled else base_path
    reward = train_reward_model(plan, start, data, run_dir, run_name)
    results["reward"] = reward.record()
    results["runtime_s"]["reward"] = reward.runtime_s
    return reward


def train_reward_model(plan: StartPlan, start: str, data: PreferenceData, run_dir: Path,
                       run_name: str) -> RewardResult:
    cfg, began = plan.config, time.perf_counter()
    work, out = run_dir / WORK_DIR, run_dir / REWARD_MODEL_DIR
    if is_main_process():
        (out / COMPLETE).unlink(missing_ok=True)  # trained again: unfinished until saved and scored
    # A resumed stage continues its W&B run, as SFT does; the id is kept next to the checkpoints.
    wandb_run = tracking.start_run(cfg, plan.resolved, run_dir, "reward", f"reward-{run_name}",
                                   tracking.stored_run_id(work, cfg.resume))
    keep_run_id(work, wandb_run)
    extra = setup_process_group(cfg.deepspeed.config is not None, cfg.faults.collective_timeout_s)
    trainer = build_reward_trainer(plan, start, data, load_tokenizer(cfg.model, start, cfg.data.conversational), work,
                                   {**extra, "report_to": tracking.report_to(wandb_run, cfg.reward.args.get("report_to"))})
    announce_training("reward", cfg, trainer, len(trainer.train_dataset))
    warn_dropped(len(data.train_pairs), len(trainer.train_dataset), trainer.args.max_length)
    faults.set_stage("reward")  # tests: injected faults name the stage they are for (sigterm:4@reward)
    try:
        signature = run_signature(cfg.seed, trainer, data.content_fingerprint())
        resume_from = train_resumably(cfg, trainer, signature, run_dir, wandb_run)
    finally:
        faults.set_stage("dpo")
    trainer.save_model(str(out))  # model, config (pad token id included) and tokenizer; ZeRO-3 gathers on every rank
    trainer.accelerator.wait_for_everyone()
    accuracy = None
    if trainer.accelerator.is_main_process:
        accuracy = held_out_accuracy(cfg, out, data.test_pairs, trainer.accelerator.device)
        mark_complete(out)
        prune_at_end(work, out, cfg.checkpoint.keep_at_end)
    trainer.accelerator.wait_for_everyone()
    result = RewardResult(path=str(out), held_out_accuracy=accuracy, num_pairs=len(data.test_pairs),
                          steps=trainer.state.global_step, runtime_s=time.perf_counter() - began, start_model=start,
                          train=last_step_record(trainer), resumed_from=str(resume_from) if resume_from else None,
                          wandb=tracking.run_info(wandb_run, cfg.wandb))
    if accuracy is not None:
        tracking.log_summary(wandb_run, {"final/held_out_accuracy": accuracy, "final/num_pairs": result.num_pairs})
        # Quoted for the shell and for Hydra: run directory names hold `=` (outputs/runs/beta.value=0.2).
        print(f"reward model: held-out accuracy {accuracy:.2f} on {result.num_pairs} pairs; saved to {out} "
              f"(to judge with it: judge=reward_model 'judge.name_or_path=\"{out}\"')", flush=True)
    tracking.finish(wandb_run)
    release(trainer)
    return result


def last_step_record(trainer) -> dict:
    """The last training step's logged loss, accuracy and margin (not the closing summary, into which TRL's
    RewardTrainer also merges them)."""
    return next((dict(e) for e in reversed(trainer.state.log_history) if "accuracy" in e and "train_runtime" not in e),
                {})


def warn_dropped(given: int, kept: int, max_length: Optional[int]) -> None:
    """TRL's RewardTrainer leaves out, without a word, pairs longer than max_length (it does not cut them)."""
    if kept < given and is_main_process():
        print(f"warning: reward: {given - kept} of {given} training pairs are longer than reward.args.max_length="
              f"{max_length} tokens and are left out by TRL; raise reward.args.max_length to keep them", flush=True)


def held_out_accuracy(cfg: MainConfig, model_dir: Path, pairs, device: torch.device) -> float:
    """Share of held-out pairs the saved reward model ranks right (ties half), scored as judge=reward_model scores:
    the directory loaded by the judge's loader, prompt + response rendered with the saved tokenizer's template."""
    # With a trainer's ZeRO-3 config still registered, from_pretrained would partition the model across ranks that
    # are not loading it.
    unset_hf_deepspeed_config()
    judge_cfg = JudgeConfig(kind=JudgeKind.reward_model, name_or_path=str(model_dir),
                            trust_remote_code=cfg.model.trust_remote_code)
    judge = load_reward_model(judge_cfg, cfg.data.conversational, device, desc="reward: scoring held-out pairs")
    rows, count = pairs[:], len(pairs)  # columns as lists
    responses = [response_text(r) for r in rows["chosen"] + rows["rejected"]]
    scores = judge.score(rows["prompt"] + rows["prompt"], responses)
    return win_rate(scores[:count], scores[count:])
