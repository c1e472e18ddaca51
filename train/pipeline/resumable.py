"""What SFT and DPO share: train from the newest complete checkpoint, and on a signal save at the step
boundary, record the stop, requeue, and stop."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from train.config.schema import MainConfig

from train.core.errors import Preempted
from train.core.files import append_jsonl
from train.runtime import tracking
from train.runtime.preemption import CheckpointedForPreemption, PreemptionCallback, requeue
from train.trainer.checkpoint import CompleteCheckpointCallback, find_resume_checkpoint


def train_resumably(cfg: MainConfig, trainer, signature: dict, run_dir: Path, wandb_run,
                    extra_callbacks: tuple = ()) -> Optional[Path]:
    """Train to the end from the newest complete checkpoint (returned; None: from the start), or, after a
    signal's checkpoint, stop the job (raises Preempted). Callback order matters: `extra_callbacks` (SFT's
    NoCheckpointAtEnd, which drops the save transformers makes at the last step) come before
    PreemptionCallback, which asks for a save on a signal, and whose on_save (ending training) comes after
    CompleteCheckpointCallback's (the checkpoint is complete by then)."""
    resume_from = resume_checkpoint(cfg, trainer, signature)
    deepspeed = cfg.deepspeed.config is not None
    trainer.add_callback(CompleteCheckpointCallback(cfg.checkpoint.keep, signature, deepspeed, trainer.accelerator))
    for callback in extra_callbacks:
        trainer.add_callback(callback)
    preemption = PreemptionCallback()
    trainer.add_callback(preemption)
    preemption.silence_reporters_on_signal(trainer)
    preemption.install()
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except CheckpointedForPreemption:
        stop_after_preemption(preemption, run_dir, trainer.accelerator.is_main_process, wandb_run)
    finally:
        preemption.uninstall()
    return resume_from


def run_signature(seed: int, trainer, data_fingerprint: str) -> dict:
    """What a resumed run must share with the run that saved the checkpoint."""
    args, world = trainer.args, trainer.accelerator.num_processes
    return {
        "world_size": world,
        "global_batch": args.per_device_train_batch_size * args.gradient_accumulation_steps * world,
        "seed": seed,
        "data": data_fingerprint,
    }


def resume_checkpoint(cfg: MainConfig, trainer, signature: dict) -> Optional[Path]:
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
    too, and closing it (errors caught) comes after, even when submitit's requeue exits."""
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


def last_logged(trainer, key: str) -> dict:
    """The last training log line that carries `key` (TRL logs rewards/* at every logging step)."""
    for entry in reversed(trainer.state.log_history):
        if key in entry:
            return dict(entry)
    return {}
