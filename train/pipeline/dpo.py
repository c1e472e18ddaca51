"""DPO stage: build the trainer, resume from the newest complete checkpoint, train until done or
preempted, score the held-out pairs, save the policy."""

from __future__ import annotations

import time
from pathlib import Path

from train.config.choices import Reference
from train.config.schema import MainConfig
from train.console.banners import announce_training
from train.core.files import mark_complete
from train.core.memory import peak_rss_mb
from train.core.ranks import num_machines
from train.core.trees import flatten
from train.data import PreferenceData
from train.models.adapters import ADAPTER_DIR, merge_adapter, pin_base_model
from train.models.loading import load_tokenizer
from train.pipeline.results import DPOResult
from train.pipeline.resumable import last_logged, run_signature, train_resumably
from train.runtime import tracking
from train.runtime.distributed import gather_rank_figures, local_numel, setup_process_group
from train.trainer.builders import build_dpo_trainer, reference_forward, release
from train.trainer.start_plan import StartPlan
from train.trainer.throughput import ThroughputCallback


def run_dpo(plan: StartPlan, reference: Path, data: PreferenceData, run_dir: Path, wandb_run,
            start_from: Path | None = None) -> DPOResult:
    """DPO from `start_from` (default: the reference itself, the SFT model) against `reference`."""
    cfg, start = plan.config, time.perf_counter()
    start_from = start_from or reference
    extra = setup_process_group(cfg.deepspeed.config is not None, cfg.faults.collective_timeout_s)
    tokenizer = load_tokenizer(cfg.model, str(start_from), cfg.data.conversational)
    trainer = build_dpo_trainer(plan, str(start_from), data, tokenizer, run_dir / "dpo",
                                {**extra, "report_to": tracking.report_to(wandb_run, cfg.dpo.args.get("report_to"))},
                                reference_path=str(reference))
    # The reference forward is part of each step unless its log-probs were precomputed (train/models/flops.py).
    announce_training("dpo", cfg, trainer, len(data.train_pairs))
    ThroughputCallback.attach(trainer, "dpo", reference_forward=reference_forward(cfg.dpo))
    resume_from = train_resumably(cfg, trainer, run_signature(cfg.seed, trainer, data.content_fingerprint()), run_dir, wandb_run)
    held_out = trainer.evaluate()
    policy_dir = run_dir / "policy"
    merge = cfg.dpo.reference == Reference.lora and cfg.dpo.lora.merge
    # Under ZeRO-3 the weights (or the adapter) are gathered into one full copy on the main process.
    trainer.save_model(str(policy_dir / ADAPTER_DIR if merge else policy_dir))
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        finish_policy(cfg, policy_dir, start_from, merge)  # a LoRA adapter sits on its start model
    runtime_s = time.perf_counter() - start
    distributed = distributed_summary(cfg, trainer)
    tracking.log_summary(wandb_run, flatten({"distributed": {f"rank{r['rank']}": {k: v for k, v in r.items() if k != "rank"}
                                                             for r in distributed["ranks"]}}))
    result = DPOResult(
        policy_path=str(policy_dir),
        reference_path=str(reference),
        train=last_logged(trainer, "rewards/accuracies"),
        history=[e for e in trainer.state.log_history if "rewards/margins" in e and "train_runtime" not in e],
        # num_pairs: the sample size of the held-out accuracy, for its interval in the sweep report.
        held_out={**{k.removeprefix("eval_"): v for k, v in held_out.items()}, "num_pairs": len(data.test_pairs)},
        steps=trainer.state.global_step,
        resumed_from=str(resume_from) if resume_from else None,
        bad_steps=trainer.bad_steps_total,
        runtime_s=runtime_s,
        distributed=distributed,
        wandb=tracking.run_info(wandb_run, cfg.wandb),
    )
    release(trainer)  # before evaluation loads whole models
    return result


def finish_policy(cfg: MainConfig, policy_dir: Path, reference: Path, merge: bool) -> None:
    """A LoRA policy names its base (the reference) by absolute path, so it loads after the run directory moves;
    with dpo.lora.merge, policy/ holds merged full weights and the adapter moves to policy/adapter/."""
    if cfg.dpo.reference == Reference.lora:
        adapter = policy_dir / ADAPTER_DIR if merge else policy_dir
        pin_base_model(adapter, str(reference), cfg.model.revision)
        if merge:  # meanwhile the other ranks wait in distributed_summary's gather (faults.collective_timeout_s)
            merge_adapter(adapter, policy_dir, cfg.model)
    mark_complete(policy_dir)


def distributed_summary(cfg: MainConfig, trainer) -> dict:
    """World size, machines, ZeRO stage, reference placement, and what each rank actually held."""
    state = trainer.accelerator.state
    figures = {
        "rank": state.process_index,
        "policy_params_local": local_numel(trainer.model),
        "reference_params_local": local_numel(trainer.ref_model),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    return {
        "world_size": state.num_processes,
        "num_machines": num_machines(),
        "zero_stage": cfg.deepspeed.stage,
        "reference": cfg.dpo.reference,
        "ranks": gather_rank_figures(figures),
    }
