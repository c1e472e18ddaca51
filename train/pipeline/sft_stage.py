"""SFT stage: train the shared SFT model once, with DPO's checkpoints, preemption and exact resume (issue 12).

Training runs in `<output_root>/sft/<key>.tmp/`, claimed by this process so other runs' orphan sweeps leave
it alone (they also keep it while it holds a complete checkpoint). A complete `checkpoint-N` is written there
every `checkpoint.every_steps` steps, signed with world size, global batch, seed and the SFT rows' content. A
signal saves one at the next step boundary, then DPO's path (train/pipeline/dpo.py) records the stop in the
run directory's preemptions.jsonl and requeues; the rerun continues exactly from the newest complete
checkpoint. Once trained, the checkpoints are deleted and the model is marked COMPLETE and renamed to
`<key>/`, which every run with the same inputs reuses.

This module is apart from sft.py because it imports dpo.py, which imports sft.py.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from train.core.files import is_complete, mark_complete, remove_orphans
from train.data import PreferenceData
from train.models.loading import load_tokenizer
from train.pipeline.dpo import resume_checkpoint, run_signature, stop_after_preemption
from train.pipeline.results import SFTResult
from train.pipeline.sft import last_logged
from train.runtime import faults, tracking
from train.runtime.distributed import setup_process_group
from train.runtime.preemption import CheckpointedForPreemption, PreemptionCallback
from train.trainer.builders import build_sft_trainer
from train.trainer.checkpoint import CompleteCheckpointCallback, NoCheckpointAtEnd, remove_checkpoints
from train.trainer.throughput import ThroughputCallback


def run_sft(cfg: DictConfig, resolved: dict, base_path: str, out: Path, data: PreferenceData,
            run_dir: Path) -> SFTResult:
    if not cfg.sft.enabled:
        return SFTResult(path=base_path, skipped=True)
    if is_complete(out):
        print(f"sft: reusing {out} (same model, data, sft settings and seed)", flush=True)
        return SFTResult(path=str(out), reused=True)
    start = time.perf_counter()
    work = out.with_name(out.name + ".tmp")
    remove_orphans(out.parent, claim=work)  # interrupted SFT outputs, kept while a live run claims them
    # A resumed SFT continues its W&B run, as DPO does; the id is kept next to the checkpoints.
    wandb_run = tracking.start_run(cfg, resolved, out.parent, "sft", f"sft-{out.name}",
                                   tracking.stored_run_id(work, cfg))
    keep_run_id(work, wandb_run)
    extra = setup_process_group(cfg.deepspeed.config is not None, cfg.faults.collective_timeout_s)
    trainer = build_sft_trainer(cfg, base_path, data, load_tokenizer(cfg, base_path), work,
                                {**extra, "report_to": tracking.report_to(wandb_run, cfg.sft.args.get("report_to"))})
    ThroughputCallback.attach(trainer, "sft")  # tokens/s, rows/s, MFU, peak memory at each logging step
    faults.set_stage("sft")  # tests: injected faults name the stage they are for
    try:
        resume_from = train_or_stop(cfg, trainer, data, run_dir, wandb_run)
    finally:
        faults.set_stage("dpo")
    trainer.save_model(str(work))
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        publish(work, out)
    trainer.accelerator.wait_for_everyone()
    runtime_s = time.perf_counter() - start
    tracking.finish(wandb_run)
    history = [e for e in trainer.state.log_history if "loss" in e and "train_runtime" not in e]
    return SFTResult(path=str(out), train=last_logged(trainer, "loss"), history=history,
                     steps=trainer.state.global_step, resumed_from=str(resume_from) if resume_from else None,
                     runtime_s=runtime_s)


def train_or_stop(cfg: DictConfig, trainer, data: PreferenceData, run_dir: Path, wandb_run) -> Optional[Path]:
    """Train to the end from the newest complete checkpoint (returned; None: from the start), or, after a
    signal's checkpoint, stop the job the way DPO does (raises Preempted)."""
    resume_from, preemption = add_checkpointing(cfg, trainer, data)
    preemption.install()
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except CheckpointedForPreemption:
        stop_after_preemption(preemption, run_dir, trainer.accelerator.is_main_process, wandb_run)
    finally:
        preemption.uninstall()
    return resume_from


def add_checkpointing(cfg: DictConfig, trainer, data: PreferenceData) -> tuple[Optional[Path], PreemptionCallback]:
    """The checkpoint to resume from (None: from the start) and the preemption callback, not yet installed.
    Callback order matters: transformers' flow callback asks for the save, NoCheckpointAtEnd drops the one at
    the last step, PreemptionCallback asks again on a signal, and its on_save (ending training) must come
    after CompleteCheckpointCallback's (the checkpoint is complete by then)."""
    # DPO's signature with the SFT rows as the data; model, sft settings and seed are also in the key of `work`.
    signature = {**run_signature(cfg, trainer, data), "data": data.content_fingerprint("sft")}
    resume_from = resume_checkpoint(cfg, trainer, signature)
    deepspeed = cfg.deepspeed.config is not None
    trainer.add_callback(CompleteCheckpointCallback(cfg.checkpoint.keep, signature, deepspeed, trainer.accelerator))
    trainer.add_callback(NoCheckpointAtEnd())
    preemption = PreemptionCallback()
    trainer.add_callback(preemption)
    preemption.silence_reporters_on_signal(trainer)
    return resume_from, preemption


def keep_run_id(work: Path, wandb_run) -> None:
    if wandb_run is not None:  # main process, W&B on
        work.mkdir(parents=True, exist_ok=True)
        (work / tracking.RUN_ID_FILE).write_text(wandb_run.id)


def publish(work: Path, out: Path) -> None:
    """The trained model alone, renamed into place: readers see a finished directory or none. Checkpoints
    go first; a crash meanwhile leaves an unfinished `work` that the rerun resumes from what is left."""
    remove_checkpoints(work)
    (work / tracking.RUN_ID_FILE).unlink(missing_ok=True)
    mark_complete(work)
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
