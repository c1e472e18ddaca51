"""What a run says at its start (the key settings) and at its end (a summary block read from results.json), on
the main process only. Pure text builders plus two print calls, so the wording is tested without a run."""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from train.core.ranks import is_main_process, num_machines, world_size
from train.pipeline.plan import count, deepspeed_text

NA = "n/a"  # a value results.json holds as null (no judge on real data, W&B off) or lacks (a stage not run)


def settings_lines(cfg: DictConfig, run_dir: Path, processes: int, machines: int) -> list[str]:
    """The settings a newcomer checks first, before minutes of loading and training."""
    model = cfg.model
    sft = "off (DPO starts from the base model)" if not cfg.sft.enabled else (
        f"on, {lr(cfg.sft.args)}{', LoRA r ' + str(cfg.sft.lora.r) if cfg.sft.lora.enabled else ''}")
    dpo = "off" if not cfg.dpo.enabled else (
        f"beta {cfg.beta.value:g} ({cfg.beta.schedule}), reference {cfg.dpo.reference}, {lr(cfg.dpo.args)}")
    return [
        f"== run: stage {cfg.stage} on {count(processes, 'process')} ({count(machines, 'machine')}), "
        f"{deepspeed_text(cfg.deepspeed.stage, cfg.deepspeed.config)} ==",
        f"  model   {model.name_or_path} ({model.dtype}, {model.attn_implementation})",
        f"  data    {cfg.data.name} ({cfg.data.source or 'generated'}), judge {cfg.judge.kind}",
        f"  sft     {sft}",
        f"  dpo     {dpo}",
        f"  output  {run_dir}",
    ]


def lr(args) -> str:
    value = args.get("learning_rate")
    return f"lr {value:.1e}" if isinstance(value, numbers.Number) else "lr (TRL's default)"


def number(value: Any, spec: str = ".3f") -> str:
    return f"{value:{spec}}" if isinstance(value, numbers.Number) and not isinstance(value, bool) else NA


def summary_lines(results: dict, run_dir: Path) -> list[str]:
    """The end of a run at a glance, from results.json's content: how the policy did, how long each stage took,
    where everything is. Absent or null fields show as n/a."""
    dpo, sft = results.get("dpo") or {}, results.get("sft") or {}
    held_out, runtime = dpo.get("held_out") or {}, results.get("runtime_s") or {}
    wandb = results.get("wandb") or {}
    times = [f"{stage} {number(runtime.get(stage), '.1f')} s" for stage in ("sft", "dpo", "eval") if stage in runtime]
    if sft.get("reused"):
        times.insert(0, "sft reused")
    policy = dpo.get("policy_path")
    reference = "base model" if sft.get("skipped") else "SFT"
    return [
        f"== summary: {run_dir} ==",
        f"  judge reward      policy {number(dpo.get('judge_reward'))} vs reference ({reference}) "
        f"{number(sft.get('judge_reward'))}",
        f"  judge             {dpo.get('judge') or NA}; agrees with {number(dpo.get('judge_agreement'))} of the "
        "held-out pairs' labels",
        f"  win rate          {number(dpo.get('win_rate_vs_reference'))} against the reference",
        f"  KL to reference   {number(dpo.get('kl_to_reference'))} nats per sample",
        f"  held-out pairs    accuracy {number(held_out.get('rewards/accuracies'))}, "
        f"margin {number(held_out.get('rewards/margins'))}, loss {number(held_out.get('loss'), '.4f')}",
        f"  wall time         {', '.join(times) if times else NA}",
        f"  policy            {policy or NA}",
        f"  results.json      {run_dir / 'results.json'}",
        f"  eval samples      {existing(run_dir / 'eval_samples.jsonl')}",
        f"  W&B               {wandb_text(wandb)}",
    ]


def existing(path: Path) -> str:
    return str(path) if path.exists() else NA


def wandb_text(wandb: dict) -> str:
    if not wandb.get("dir"):
        return NA
    upload = "; upload: wandb sync <dir>" if wandb.get("mode") == "offline" else ""
    return f"{wandb['dir']} ({wandb.get('mode') or NA}{upload})"


def print_settings(cfg: DictConfig, run_dir: Path) -> None:
    if is_main_process():
        print("\n".join(settings_lines(cfg, run_dir, world_size(), num_machines())), flush=True)


def print_summary(results: Optional[dict], run_dir: Path) -> None:
    if is_main_process() and results:
        print("\n".join(summary_lines(results, run_dir)), flush=True)
