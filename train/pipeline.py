"""The pipeline, top to bottom: validate -> data -> SFT -> DPO -> evaluate -> results.json."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from train import tracking
from train.config import ConfigError, build_dpo_config, build_sft_config, validate
from train.data import PreferenceData, load_preference_data
from train.distributed import check_offload_memory, num_machines
from train.models import count_parameters, ensure_base_model, load_model, load_tokenizer

COMPLETE = "COMPLETE"  # marker written last into a finished model directory


def run(cfg: DictConfig, run_dir: Path, run_name: str) -> dict[str, Any]:
    validate(cfg)  # before anything is written: a failed start leaves earlier runs untouched
    resolved = OmegaConf.to_container(cfg, resolve=True)
    base_path = ensure_base_model(cfg)
    check_offload_memory(resolved["deepspeed"]["config"], base_path, cfg.model.trust_remote_code, num_machines())
    data = load_preference_data(cfg, load_tokenizer(cfg, base_path))
    if cfg.dry_run:
        return dry_run(cfg, base_path, data, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    if data.report and tracking.is_main_process():
        (run_dir / "data_report.json").write_text(json.dumps(data.report, indent=2))

    results = load_results(run_dir) if cfg.stage in ("dpo", "eval") else {}
    results.setdefault("runtime_s", {})
    results.update(beta=cfg.beta.value, beta_schedule=OmegaConf.to_container(cfg.beta), experiment=cfg.experiment)
    sft_path = sft_output_dir(cfg)
    if cfg.stage in ("all", "sft"):
        results["sft"] = run_sft(cfg, resolved, base_path, sft_path, data, results["runtime_s"])
    wandb_run = None
    # With SFT off, DPO starts from the base model itself, which is then also the reference.
    reference = require_model(sft_path, "sft") if cfg.sft.enabled else base_path
    if cfg.stage in ("all", "dpo") and cfg.dpo.enabled:
        # A restarted run (requeue, rerun) continues its W&B run: the id is kept in the run directory.
        wandb_run = tracking.start_run(cfg, resolved, run_dir, "dpo", run_name, tracking.stored_run_id(run_dir, cfg))
        tracking.log_summary(wandb_run, {f"data/{k}": v for k, v in flatten(data.report).items()})
        results["dpo"] = run_dpo(cfg, reference, data, run_dir, wandb_run, results)
    if cfg.stage in ("all", "eval") and cfg.dpo.enabled and cfg.eval.enabled:
        evaluation = run_eval(cfg, require_model(run_dir / "policy", "dpo"), reference, data, run_dir)
        results["runtime_s"]["eval"] = evaluation.pop("runtime_s")
        results.setdefault("sft", {})["judge_reward"] = evaluation.pop("reference_judge_reward", None)
        results.setdefault("dpo", {}).update(evaluation)
        if wandb_run is None:  # stage=eval on its own: add to the DPO stage's W&B run
            wandb_run = tracking.start_run(cfg, resolved, run_dir, "dpo", run_name, results.get("wandb", {}).get("run_id"))
        tracking.log_summary(wandb_run, {f"final/{k}": v for k, v in evaluation.items() if v is not None})
    tracking.finish(wandb_run)
    if tracking.is_main_process():
        write_results(run_dir, results)
    return results


def sft_output_dir(cfg: DictConfig) -> Path:
    """SFT output keyed by everything that determines it, so a beta sweep trains SFT once and shares it."""
    inputs = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data", "sft")}
    inputs["seed"] = cfg.seed
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cfg.output_root).resolve() / "sft" / key


def require_model(path: Path, stage: str) -> Path:
    if (path / COMPLETE).exists():
        return path
    raise ConfigError(f"no finished {stage} model at {path}: run stage={stage} (or stage=all) first")


def run_sft(cfg, resolved, base_path: str, out: Path, data: PreferenceData, runtime: dict) -> dict:
    from trl import SFTTrainer

    from train.throughput import ThroughputCallback

    if not cfg.sft.enabled:
        return {"path": base_path, "skipped": True}
    if (out / COMPLETE).exists():
        print(f"sft: reusing {out} (same model, data, sft settings and seed)", flush=True)
        return {"path": str(out), "reused": True}
    start = time.perf_counter()
    wandb_run = tracking.start_run(cfg, resolved, out.parent, "sft", f"sft-{out.name}")
    args = build_sft_config(cfg, out.with_name(out.name + ".tmp"))
    args.report_to = tracking.report_to(wandb_run)
    trainer = SFTTrainer(model=base_path, args=args, train_dataset=data.sft, processing_class=load_tokenizer(cfg, base_path))
    ThroughputCallback.attach(trainer, "sft")  # tokens/s, rows/s, MFU, peak memory at each logging step
    trainer.train()
    trainer.save_model(args.output_dir)
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        (Path(args.output_dir) / COMPLETE).write_text("")
        shutil.rmtree(out, ignore_errors=True)
        Path(args.output_dir).rename(out)  # atomic: readers see a finished directory or none
    trainer.accelerator.wait_for_everyone()
    runtime["sft"] = time.perf_counter() - start
    tracking.finish(wandb_run)
    return {"path": str(out), "reused": False, "train": last_logged(trainer, "loss")}


def run_dpo(cfg, sft_path: Path, data: PreferenceData, run_dir: Path, wandb_run, results: dict) -> dict:
    from train.checkpoint import CompleteCheckpointCallback, find_resume_checkpoint
    from train.preemption import PreemptionCallback
    from train.throughput import ThroughputCallback
    from train.trainer import dpo_trainer_class

    start = time.perf_counter()
    args = build_dpo_config(cfg, run_dir / "dpo")
    args.report_to = tracking.report_to(wandb_run)
    trainer = dpo_trainer_class(cfg)(
        model=str(sft_path),  # TRL loads the reference from the same path: the SFT model, never a checkpoint
        args=args,
        train_dataset=data.train_pairs,
        eval_dataset=data.test_pairs,
        processing_class=load_tokenizer(cfg, str(sft_path)),
        peft_config=lora_config(cfg) if cfg.dpo.reference == "lora" else None,
    )
    # The reference forward is part of each step unless its log-probs were precomputed (train/flops.py).
    ThroughputCallback.attach(trainer, "dpo", reference_forward=cfg.dpo.reference != "precomputed")
    world, deepspeed = trainer.accelerator.num_processes, cfg.deepspeed.config is not None
    signature = {
        "world_size": world,
        "global_batch": args.per_device_train_batch_size * args.gradient_accumulation_steps * world,
        "seed": cfg.seed,
        "data": data.train_pairs._fingerprint,
    }
    resume_from = None
    if cfg.resume.enabled:
        resume_from = find_resume_checkpoint(Path(args.output_dir), signature, cfg.resume.allow_changes, world, deepspeed)
    if resume_from is not None:
        print(f"resume: continuing from {resume_from}", flush=True)
    preemption = PreemptionCallback()
    trainer.add_callback(CompleteCheckpointCallback(cfg.checkpoint.keep, signature, deepspeed, trainer.accelerator))
    trainer.add_callback(preemption)
    preemption.install()
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        preemption.uninstall()
    if preemption.stopped_at_step is not None:
        stop_after_preemption(preemption, run_dir, trainer.accelerator.is_main_process)
    held_out = trainer.evaluate()
    policy_dir = run_dir / "policy"
    trainer.save_model(str(policy_dir))  # under ZeRO-3 the weights are gathered into one full model
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        (policy_dir / COMPLETE).write_text("")
    results["runtime_s"]["dpo"] = time.perf_counter() - start
    results["distributed"] = distributed_summary(cfg, trainer)
    tracking.log_summary(wandb_run, {f"distributed/rank{r['rank']}/{k}": v for r in results["distributed"]["ranks"] for k, v in r.items() if k != "rank"})
    results["wandb"] = {
        "run_id": wandb_run.id if wandb_run else None,
        "dir": str(Path(wandb_run.dir).parent) if wandb_run else None,
        "project": cfg.wandb.project,
        "mode": None if wandb_run is None else "offline" if wandb_run.offline else "online",
    }
    return {
        "policy_path": str(policy_dir),
        "reference_path": str(sft_path),
        "train": last_logged(trainer, "rewards/accuracies"),
        "history": [e for e in trainer.state.log_history if "rewards/margins" in e and "train_runtime" not in e],
        "held_out": {k.removeprefix("eval_"): v for k, v in held_out.items()},
        "steps": trainer.state.global_step,
        "resumed_from": str(resume_from) if resume_from else None,
        "bad_steps": trainer.bad_steps_total,
    }


class Preempted(Exception):
    """Stopped by a signal after saving a complete checkpoint; `requeued` if the scheduler has the job again."""

    def __init__(self, message: str, requeued: bool) -> None:
        super().__init__(message)
        self.requeued = requeued


def stop_after_preemption(preemption, run_dir: Path, is_main_process: bool) -> None:
    """Record the stop in <run dir>/preemptions.jsonl, then requeue (main process) and stop this process."""
    from train.preemption import requeue

    seconds = time.monotonic() - preemption.flag_time if preemption.flag_time else 0.0
    message = f"checkpoint at step {preemption.stopped_at_step} complete {seconds:.1f} s after the signal"
    if not is_main_process:
        raise Preempted(message, requeued=True)
    with open(run_dir / "preemptions.jsonl", "a") as f:
        f.write(json.dumps({"step": preemption.stopped_at_step, "signal_to_checkpoint_s": round(seconds, 2)}) + "\n")
    print(f"preempted: {message}", flush=True)
    how = requeue(preemption)  # under submitit this requeues and exits right here
    raise Preempted(f"{message}; {how}", requeued=how.startswith(("scontrol", "submitit")))


def lora_config(cfg):
    from peft import LoraConfig

    spec = cfg.dpo.lora
    return LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                      target_modules=list(spec.target_modules), task_type="CAUSAL_LM")


def distributed_summary(cfg, trainer) -> dict:
    """World size, machines, ZeRO stage, reference placement, and what each rank actually held."""
    from train.distributed import gather_rank_figures, local_numel, peak_rss_mb

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


def last_logged(trainer, key: str) -> dict:
    """The last training log line that carries `key` (TRL logs rewards/* at every logging step)."""
    for entry in reversed(trainer.state.log_history):
        if key in entry:
            return dict(entry)
    return {}


def run_eval(cfg, policy_path: Path, reference_path: Path, data: PreferenceData, run_dir: Path) -> dict:
    from train.evaluate import evaluate

    if not tracking.is_main_process():
        return {"runtime_s": 0.0}
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

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
    with open(run_dir / "eval_samples.jsonl", "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in samples)
    metrics.setdefault("judge_reward", None)
    metrics.setdefault("win_rate_vs_reference", None)
    metrics["runtime_s"] = time.perf_counter() - start
    return metrics


def dry_run(cfg, base_path: str, data: PreferenceData, run_dir: Path) -> dict:
    tokenizer = load_tokenizer(cfg, base_path)
    model = load_model(cfg, base_path)
    build_sft_config(cfg, run_dir / "sft-dry-run", with_deepspeed=False)
    build_dpo_config(cfg, run_dir / "dpo-dry-run", with_deepspeed=False)
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


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def load_results(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_results(run_dir: Path, results: dict) -> Path:
    path = run_dir / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=float))
    tmp.replace(path)
    return path
