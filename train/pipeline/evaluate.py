"""Evaluation stage: sample held-out prompts from policy and reference, estimate the KL, judge the samples and
the held-out pairs. Every rank takes its share of the prompts and pairs; the records are gathered in prompt
order, so 1 and N processes report the same samples and metrics (train/models/sampling.py)."""

from __future__ import annotations

import gc
import os
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import PartialState
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from train.config.schema import FaultsConfig, MainConfig
from train.core.files import write_jsonl
from train.core.ranks import is_main_process, world_size
from train.data import PreferenceData
from train.models import judges
from train.models.loading import load_model, load_tokenizer
from train.models.sampling import (eval_metrics, judge_records, render_prompts, sample_policy, sample_reference,
                                   shard_bounds, win_rate)
from train.console.banners import eval_banner
from train.pipeline.results import EvalResult
from train.runtime.distributed import gather_rank_figures, is_distributed, setup_process_group


def run_eval(cfg: MainConfig, policy_path: Path, reference_path: Path, data: PreferenceData, run_dir: Path) -> EvalResult:
    # Evaluation loads whole models on every rank; with the trainer's ZeRO-3 config still registered,
    # from_pretrained would partition them with zero.Init and wait forever for the other ranks.
    unset_hf_deepspeed_config()
    start = time.perf_counter()
    rank, world, device = join_process_group(cfg.faults)
    prompts = data.eval_prompts["prompt"][: cfg.eval.num_prompts]
    if is_main_process():
        print(eval_banner(len(prompts), world, cfg.eval.max_new_tokens, cfg.eval.temperature, judges.describe(cfg.judge)),
              flush=True)
    low, high = shard_bounds(len(prompts), rank, world)
    records = sample_share(cfg, policy_path, reference_path, prompts[low:high], list(range(low, high)), device)
    judge = judges.load_judge(cfg.judge, cfg.data.conversational, device, progress=is_main_process())
    pair_scores = []
    if judge is not None:
        judge_records(judge, records, prompts)
        pair_scores = judge_pairs(judge, data, rank, world)
    del judge  # a reward model's memory, before the gather
    records = [r for share in gather_rank_figures(records) for r in share]
    pair_scores = [s for share in gather_rank_figures(pair_scores) for s in share]
    assert [r["index"] for r in records] == list(range(len(prompts)))
    agreement = win_rate(*zip(*pair_scores)) if pair_scores else None
    metrics = {**eval_metrics(records, agreement), "judge": judges.describe(cfg.judge)}
    if is_main_process():
        write_jsonl(run_dir / "eval_samples.jsonl", records)
        if abs(metrics["kl_to_reference"]) < 1e-6 and all(x["policy"] == x["reference"] for x in records):
            print("warning: the policy ends identical to its reference (KL 0, identical samples): DPO changed "
                  "nothing; check dpo.args.learning_rate, the number of steps and the data", flush=True)
    return EvalResult(metrics=metrics, reference_judge_reward=metrics["reference_judge_reward"],
                      runtime_s=time.perf_counter() - start)


def join_process_group(faults: FaultsConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device) for evaluation. After DPO the trainer's process group is up; stage=eval on its
    own trains nothing, so under a multi-process launch it joins the group here (CPU: the gloo workaround of
    train/runtime/distributed.py; GPU: accelerate's own nccl setup). Each rank evaluates on its local GPU."""
    if world_size() > 1 and not is_distributed():
        setup_process_group(use_deepspeed=False, timeout_s=faults.collective_timeout_s)
        if not is_distributed():
            PartialState(timeout=timedelta(seconds=faults.collective_timeout_s))
    if not is_distributed():
        rank, world = 0, 1
    else:
        rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")


def sample_share(cfg: MainConfig, policy_path: Path, reference_path: Path, prompts: list, indices: list[int],
                 device: torch.device) -> list[dict]:
    """This rank's prompts sampled from policy and reference, one model in memory at a time: the policy samples and
    scores its own samples, is freed, then the reference scores them and samples. A GPU holds one whole model for
    evaluation, not two (an 8B pair in bf16: 16 GB, not 32)."""
    tokenizer = load_tokenizer(cfg.model, str(policy_path), cfg.data.conversational)
    texts = render_prompts(tokenizer, prompts, cfg.data.conversational)
    args = (cfg.eval.max_new_tokens, cfg.eval.temperature)
    policy = load_model(cfg.model, str(policy_path)).to(device).eval()
    batches = sample_policy(policy, tokenizer, texts, indices, *args, cfg.eval.batch_size, cfg.seed,
                            progress=is_main_process())
    free(policy)
    reference = load_model(cfg.model, str(reference_path)).to(device).eval()
    records = sample_reference(reference, tokenizer, batches, *args, progress=is_main_process())
    free(reference)
    return records


def free(model) -> None:
    """Drops the last reference to an evaluation model and returns its GPU memory to the device."""
    model.to("meta")
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def judge_pairs(judge, data: PreferenceData, rank: int, world: int) -> list[tuple[float, float]]:
    """(judge(chosen), judge(rejected)) for this rank's share of the held-out pairs: does the judge agree with the
    data's labels? (The lexicon judge made the synthetic labels, so it agrees by construction.)"""
    low, high = shard_bounds(len(data.test_pairs), rank, world)
    pairs = data.test_pairs[low:high] if high > low else {"prompt": [], "chosen": [], "rejected": []}
    responses = [judges.response_text(r) for r in pairs["chosen"] + pairs["rejected"]]
    scores = judge.score(pairs["prompt"] + pairs["prompt"], responses)
    return list(zip(scores[: high - low], scores[high - low :]))
