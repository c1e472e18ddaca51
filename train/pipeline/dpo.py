"""DPO stage: build the trainer, resume from the newest complete checkpoint, train until done or
preempted, score the held-out pairs, save the policy."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from train.core.errors import Preempted
from train.core.files import append_jsonl, mark_complete
from train.core.memory import peak_rss_mb
from train.core.ranks import num_machines
from train.core.trees import flatten
from train.data import PreferenceData
from train.models.loading import load_tokenizer
from train.pipeline.results import DPOResult
from train.pipeline.sft import last_logged
from train.runtime import tracking
from train.runtime.distributed import gather_rank_figures, local_numel, setup_process_group
from train.runtime.preemption import CheckpointedForPreemption, PreemptionCallback, requeue
from train.trainer.builders import build_dpo_trainer, reference_forward
from train.trainer.checkpoint import CompleteCheckpointCallback, find_resume_checkpoint
from train.trainer.throughput import ThroughputCallback


def run_dpo(cfg: DictConfig, reference: Path, data: PreferenceData, run_dir: Path, wandb_run) -> DPOResult:
    start = time.perf_counter()
    extra = setup_process_group(cfg.deepspeed.config is not None, cfg.faults.collective_timeout_s)
    trainer = build_dpo_trainer(cfg, str(reference), data, load_tokenizer(cfg, str(reference)), run_dir / "dpo",
                                {**extra, "report_to": tracking.report_to(wandb_run, cfg.dpo.args.get("report_to"))})
    # The reference forward is part of each step unless its log-probs were precomputed (train/models/flops.py).
    ThroughputCallback.attach(trainer, "dpo", reference_forward=reference_forward(cfg))
    signature = run_signature(cfg, trainer, data)
    resume_from = resume_checkpoint(cfg, trainer, signature)
    deepspeed = cfg.deepspeed.config is not None
    trainer.add_callback(CompleteCheckpointCallback(cfg.checkpoint.keep, signature, deepspeed, trainer.accelerator))
    preemption = PreemptionCallback()
    trainer.add_callback(preemption)  # after CompleteCheckpointCallback: the checkpoint is complete by its on_save
    preemption.silence_reporters_on_signal(trainer)
    preemption.install()
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except CheckpointedForPreemption:
        stop_after_preemption(preemption, run_dir, trainer.accelerator.is_main_process, wandb_run)
    finally:
        preemption.uninstall()
    held_out = trainer.evaluate()
    policy_dir = run_dir / "policy"
    trainer.save_model(str(policy_dir))  # under ZeRO-3 the weights are gathered into one full model
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        mark_complete(policy_dir)
    runtime_s = time.perf_counter() - start
    distributed = distributed_summary(cfg, trainer)
    tracking.log_summary(wandb_run, flatten({"distributed": {f"rank{r['rank']}": {k: v for k, v in r.items() if k != "rank"}
                                                             for r in distributed["ranks"]}}))
    return DPOResult(
        policy_path=str(policy_dir),
        reference_path=str(reference),
        train=last_logged(trainer, "rewards/accuracies"),
        history=[e for e in trainer.state.log_history if "rewards/margins" in e and "train_runtime" not in e],
        held_out={k.removeprefix("eval_"): v for k, v in held_out.items()},
        steps=trainer.state.global_step,
        resumed_from=str(resume_from) if resume_from else None,
        bad_steps=trainer.bad_steps_total,
        runtime_s=runtime_s,
        distributed=distributed,
        wandb=tracking.run_info(wandb_run, cfg),
    )


def run_signature(cfg: DictConfig, trainer, data: PreferenceData) -> dict:
    """What a resumed run must share with the run that saved the checkpoint."""
    args, world = trainer.args, trainer.accelerator.num_processes
    return {
        "world_size": world,
        "global_batch": args.per_device_train_batch_size * args.gradient_accumulation_steps * world,
        "seed": cfg.seed,
        "data": data.content_fingerprint(),
    }


def resume_checkpoint(cfg: DictConfig, trainer, signature: dict) -> Optional[Path]:
    if not cfg.resume.enabled:
        return None
    found = find_resume_checkpoint(Path(trainer.args.output_dir), signature, cfg.resume.allow_changes,
                                   trainer.accelerator.num_processes, cfg.deepspeed.config is not None)
    if found is not None:
        print(f"resume: continuing from {found}", flush=True)
    return found


def stop_after_preemption(preemption: PreemptionCallback, run_dir: Path, is_main_process: bool, wandb_run) -> None:
    """Record the stop in <run dir>/preemptions.jsonl, requeue (main process), close W&B, stop this process.

    The requeue comes before anything that needs a helper process: the signal may have ended W&B's service
    too (issue 12), and closing it (errors caught) comes after, even when submitit's requeue exits."""
    seconds = time.monotonic() - preemption.flag_time if preemption.flag_time else 0.0
    message = f"checkpoint at step {preemption.stopped_at_step} complete {seconds:.1f} s after the signal"
    if not is_main_process:
        raise Preempted(message, requeued=True)
    append_jsonl(run_dir / "preemptions.jsonl", {"step": preemption.stopped_at_step, "signal_to_checkpoint_s": round(seconds, 2)})
    print(f"preempted: {message}", flush=True)
    try:
        how = requeue(preemption)  # under submitit this requeues and exits right here (SystemExit)
    finally:
        tracking.close_after_preemption(wandb_run)
    raise Preempted(f"{message}; {how}", requeued=how.startswith(("scontrol", "submitit")))


def distributed_summary(cfg: DictConfig, trainer) -> dict:
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
