"""SFT stage: the shared SFT model, trained once per model, data, sft settings and seed (a sweep trains SFT
once), with DPO's checkpoints, preemption and exact resume.

Training runs in `<output_root>/sft/<key>.tmp/`, claimed by this process so other runs' orphan sweeps leave
it alone (they also keep it while it holds a complete checkpoint). A complete `checkpoint-N` is written there
every `checkpoint.every_steps` steps, signed with world size, global batch, seed and the SFT rows' content. A
signal saves one at the next step boundary, records the stop in the run directory's preemptions.jsonl and
requeues (train/pipeline/resumable.py); the rerun continues exactly from the newest complete checkpoint. Once
trained, the checkpoints are deleted and the model is marked COMPLETE and renamed to `<key>/`, which every
run with the same inputs reuses. With sft.lora the trained adapter is kept in `<key>/adapter/` and `<key>/`
holds it merged into full weights, so DPO and every later stage load a plain model directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

from train.config.schema import MainConfig
from train.console.banners import announce_training
from train.core.errors import ConfigError
from train.core.files import is_complete, mark_complete, memoized_sha256, remove_orphans
from train.data import PreferenceData
from train.data.preference import data_identity, hash_memo_dir
from train.models.adapters import ADAPTER_DIR, merge_adapter, pin_base_model
from train.models.loading import load_tokenizer
from train.models.tiny import OWNER_MARKER
from train.pipeline.results import SFTResult
from train.pipeline.resumable import last_logged, run_signature, train_resumably
from train.runtime import faults, tracking
from train.runtime.distributed import setup_process_group
from train.trainer.builders import build_sft_trainer, release
from train.trainer.checkpoint import NoCheckpointAtEnd, remove_checkpoints
from train.trainer.start_plan import StartPlan
from train.trainer.throughput import ThroughputCallback


def sft_output_dir(cfg: MainConfig) -> Path:
    """SFT output keyed by everything that determines it, so a beta sweep trains SFT once and shares it.
    Local model and data paths enter by content: a moved output root (the tiny model lives under it) or a
    copied model or data directory still finds its SFT model."""
    sft = dataclasses.asdict(cfg.sft)
    if not sft["lora"]["enabled"]:
        del sft["lora"]  # unused settings: full fine-tuning keeps the key it had before sft.lora existed
    inputs = {"model": model_identity(cfg), "data": data_identity(cfg), "sft": sft}
    inputs["seed"] = cfg.seed
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cfg.output_root).resolve() / "sft" / key


def model_identity(cfg: MainConfig) -> dict:
    """The model config with a local name_or_path as its files' sha256s (memoized by size and mtime, so a
    large model is read once per location); a hub id stays as given, its revision is in the config."""
    model = dataclasses.asdict(cfg.model)
    path = Path(str(model["name_or_path"])).expanduser()
    if path.is_dir():
        memo = hash_memo_dir(cfg)
        # The ownership marker says who built the directory (and when), not what the model is.
        model["name_or_path"] = {p.name: memoized_sha256(p, memo) for p in sorted(path.iterdir())
                                 if p.is_file() and p.name != OWNER_MARKER}
    return model


def require_model(path: Path, stage: str) -> Path:
    if is_complete(path):
        return path
    raise ConfigError(f"no finished {stage} model at {path}: run stage={stage} (or stage=all) first")


def run_sft(plan: StartPlan, base_path: str, out: Path, data: PreferenceData, run_dir: Path) -> SFTResult:
    cfg = plan.config
    if not cfg.sft.enabled:
        return SFTResult(path=base_path, skipped=True)
    if is_complete(out):
        print(f"== sft: reusing {out} (same model, data, sft settings and seed) ==", flush=True)
        return SFTResult(path=str(out), reused=True)
    start = time.perf_counter()
    work = out.with_name(out.name + ".tmp")
    remove_orphans(out.parent, claim=work)  # interrupted SFT outputs, kept while a live run claims them
    # A resumed SFT continues its W&B run, as DPO does; the id is kept next to the checkpoints.
    wandb_run = tracking.start_run(cfg, plan.resolved, out.parent, "sft", f"sft-{out.name}",
                                   tracking.stored_run_id(work, cfg.resume))
    keep_run_id(work, wandb_run)
    extra = setup_process_group(cfg.deepspeed.config is not None, cfg.faults.collective_timeout_s)
    trainer = build_sft_trainer(plan, base_path, data, load_tokenizer(cfg.model, base_path, cfg.data.conversational),
                                work, {**extra, "report_to": tracking.report_to(wandb_run, cfg.sft.args.get("report_to"))})
    announce_training("sft", cfg, trainer, len(data.sft))
    ThroughputCallback.attach(trainer, "sft")  # tokens/s, rows/s, MFU, peak memory at each logging step
    faults.set_stage("sft")  # tests: injected faults name the stage they are for
    try:
        # DPO's signature with the SFT rows as the data; model, sft settings and seed are in the key of `work`.
        signature = run_signature(cfg.seed, trainer, data.content_fingerprint("sft"))
        resume_from = train_resumably(cfg, trainer, signature, run_dir, wandb_run, (NoCheckpointAtEnd(),))
    finally:
        faults.set_stage("dpo")
    lora = cfg.sft.lora.enabled
    trainer.save_model(str(work / ADAPTER_DIR if lora else work))  # under ZeRO-3 every rank joins the gather
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        if lora:  # DPO loads its start and reference by path: publish full weights, the adapter kept beside them
            pin_base_model(work / ADAPTER_DIR, base_path, cfg.model.revision)
            merge_adapter(work / ADAPTER_DIR, work, cfg.model)
        publish(work, out)
    trainer.accelerator.wait_for_everyone()
    runtime_s = time.perf_counter() - start
    tracking.finish(wandb_run)
    history = [e for e in trainer.state.log_history if "loss" in e and "train_runtime" not in e]
    result = SFTResult(path=str(out), train=last_logged(trainer, "loss"), history=history,
                       steps=trainer.state.global_step, resumed_from=str(resume_from) if resume_from else None,
                       runtime_s=runtime_s)
    release(trainer)  # before DPO loads policy and reference
    return result


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
