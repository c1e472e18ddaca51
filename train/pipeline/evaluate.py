"""Evaluation stage: sample held-out prompts from policy and reference, judge them, estimate the KL."""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from train.core.files import write_jsonl
from train.core.ranks import is_main_process
from train.data import PreferenceData
from train.models.loading import load_model, load_tokenizer
from train.models.sampling import evaluate
from train.pipeline.results import EvalResult


def run_eval(cfg: DictConfig, policy_path: Path, reference_path: Path, data: PreferenceData, run_dir: Path) -> EvalResult:
    if not is_main_process():
        return EvalResult(metrics={}, reference_judge_reward=None, runtime_s=0.0)
    # Evaluation loads whole models on one process; with the trainer's ZeRO-3 config still registered,
    # from_pretrained would partition them with zero.Init and wait forever for the other ranks.
    unset_hf_deepspeed_config()
    start = time.perf_counter()
    tokenizer = load_tokenizer(cfg, str(policy_path))
    policy, reference = load_model(cfg, str(policy_path)).eval(), load_model(cfg, str(reference_path)).eval()
    prompts = data.eval_prompts["prompt"][: cfg.eval.num_prompts]
    metrics, samples = evaluate(
        policy, reference, tokenizer, prompts, cfg.data.conversational, data.judge,
        cfg.eval.max_new_tokens, cfg.eval.temperature, cfg.eval.batch_size, cfg.seed,
    )
    write_jsonl(run_dir / "eval_samples.jsonl", samples)
    if abs(metrics["kl_to_reference"]) < 1e-6 and all(x["policy"] == x["reference"] for x in samples):
        print("warning: the policy ends identical to its reference (KL 0, identical samples): DPO changed nothing; "
              "check dpo.args.learning_rate, the number of steps and the data", flush=True)
    reference_reward = metrics.pop("reference_judge_reward", None)
    metrics.setdefault("judge_reward", None)
    metrics.setdefault("win_rate_vs_reference", None)
    return EvalResult(metrics=metrics, reference_judge_reward=reference_reward, runtime_s=time.perf_counter() - start)
