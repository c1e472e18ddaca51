"""What a run says at its start (the key settings) and at its end (a summary block read from results.json), on
the main process only. Pure text builders plus two print calls, so the wording is tested without a run."""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from train.config.compose import CONFIG_DIR
from train.config.schema import MainConfig
from train.console.banners import count, deepspeed_text
from train.core.ranks import is_main_process, num_machines, world_size

NA = "n/a"  # a value results.json holds as null (no judge on real data, W&B off) or lacks (a stage not run)


def settings_lines(cfg: MainConfig, run_dir: Path, processes: int, machines: int) -> list[str]:
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
        *filter(None, [real_model_hint(cfg)]),
    ]


def real_model_hint(cfg: MainConfig) -> Optional[str]:
    """A real model trained at the learning rates the sft and dpo groups tune for the tiny model (1e-3 and up:
    a pretrained model's weights are wrecked in a few steps) gets a hint, not a refusal: they may be meant."""
    if cfg.model.tiny is not None:
        return None
    toy = [f"{stage} {lr(getattr(cfg, stage).args)}" for stage in ("sft", "dpo") if getattr(cfg, stage).enabled
           and getattr(cfg, stage).args.get("learning_rate") == group_default(stage).args.get("learning_rate")]
    if not toy:
        return None
    return (f"hint: {', '.join(toy)}: the tiny model's learning rate{'s' if len(toy) > 1 else ''} (conf/sft, conf/dpo); for "
            f"{cfg.model.name_or_path} add recipe=real_model (conf/recipe/real_model.yaml: a pretrained model's rates and lengths)")


def group_default(stage: str) -> DictConfig:
    return OmegaConf.load(Path(CONFIG_DIR) / stage / "default.yaml")


def lr(args) -> str:
    value = args.get("learning_rate")
    return f"lr {value:.1e}" if isinstance(value, numbers.Number) else "lr (TRL's default)"


def number(value: Any, spec: str = ".3f") -> str:
    return f"{value:{spec}}" if isinstance(value, numbers.Number) and not isinstance(value, bool) else NA


def summary_lines(results: dict, run_dir: Path, kept: Sequence[Path] = ()) -> list[str]:
    """The end of a run at a glance, from results.json's content: how the policy did, how long each stage took,
    where everything is. Absent or null fields show as n/a. `kept`: the DPO checkpoints left in the run directory
    (the caller lists them: the console sits below the trainer layer that knows their names)."""
    dpo, sft = results.get("dpo") or {}, results.get("sft") or {}
    held_out, runtime = dpo.get("held_out") or {}, results.get("runtime_s") or {}
    wandb = results.get("wandb") or {}
    times = [f"{stage} {number(runtime.get(stage), '.1f')} s" for stage in ("sft", "dpo", "eval", "reward")
             if stage in runtime]
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
        *rounds_table(results.get("rounds") or []),
        f"  wall time         {', '.join(times) if times else NA}",
        f"  policy            {policy or NA}",
        *([reward_text(results["reward"])] if results.get("reward") else []),
        f"  results.json      {run_dir / 'results.json'}",
        f"  eval samples      {existing(samples_dir(results, run_dir) / 'eval_samples.jsonl')}",
        f"  W&B               {wandb_text(wandb)}",
        f"  on disk           {disk_text(run_dir, kept)}",
    ]


def samples_dir(results: dict, run_dir: Path) -> Path:
    """Where the run's evaluation samples are: its own directory, or with on-policy rounds the last round's."""
    rounds = results.get("rounds") or []
    return Path(rounds[-1]["policy_path"]).parent if rounds and rounds[-1].get("policy_path") else run_dir


def rounds_table(rounds: list[dict]) -> list[str]:
    """On-policy rounds, one line each: what was made (prompts, pairs, the labeler's mean chosen / rejected score)
    and how that round's policy did against the SFT model (judge reward, KL, win rate)."""
    if not rounds:
        return []
    head = "  rounds            round  prompts  pairs  label chosen/rejected  judge reward  KL to SFT  win vs SFT"
    return [head, *(f"                    {r.get('round', NA):>5}  {r.get('prompts', NA):>7}  {r.get('pairs', NA):>5}  "
                    f"{number(r.get('label_mean_chosen')):>10}/{number(r.get('label_mean_rejected')):<10}  "
                    f"{number(r.get('judge_reward')):>12}  {number(r.get('kl_to_sft')):>9}  "
                    f"{number(r.get('win_rate_vs_sft')):>10}" for r in rounds)]


def reward_text(reward: dict) -> str:
    """stage=reward's line: how well the reward model ranks the held-out pairs, and where it is."""
    return (f"  reward model      held-out accuracy {number(reward.get('held_out_accuracy'))} on "
            f"{reward.get('num_pairs', NA)} pairs; {reward.get('path') or NA}")


def existing(path: Path) -> str:
    return str(path) if path.exists() else NA


def disk_text(run_dir: Path, kept: Sequence[Path]) -> str:
    """What the run directory holds and its size: the policy, and the DPO checkpoints checkpoint.keep_at_end kept
    (each a full model with optimizer state, the bulk of a finished run's disk)."""
    names = f"{', '.join(p.name for p in kept)} ({megabytes(sum(map(disk_usage, kept)))}, with optimizer state)" \
        if kept else "none"
    prune = "; checkpoint.keep_at_end=none keeps only the policy" if kept else ""
    return (f"run directory {megabytes(disk_usage(run_dir))}: policy {megabytes(disk_usage(run_dir / 'policy'))}, "
            f"checkpoints {names} (checkpoint.keep_at_end){prune}")


def disk_usage(path: Path) -> int:
    """Bytes of the files under `path` (0 if absent)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) if path.exists() else 0


def megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def wandb_text(wandb: dict) -> str:
    if not wandb.get("dir"):
        return NA
    upload = "; upload: wandb sync <dir>" if wandb.get("mode") == "offline" else ""
    return f"{wandb['dir']} ({wandb.get('mode') or NA}{upload})"


def print_settings(cfg: MainConfig, run_dir: Path) -> None:
    if is_main_process():
        print("\n".join(settings_lines(cfg, run_dir, world_size(), num_machines())), flush=True)


def print_summary(results: Optional[dict], run_dir: Path, kept: Sequence[Path]) -> None:
    if is_main_process() and results:
        print("\n".join(summary_lines(results, run_dir, kept)), flush=True)
