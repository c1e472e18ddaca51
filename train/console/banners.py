"""What a stage will do, from its trainer arguments and its rows: optimizer steps, the global batch, and the
settings a user would want to hear about before it trains (make dry-run prints them; each stage says them at start,
after its one-line banner: what runs, on how many processes, how many steps)."""

from __future__ import annotations

import math

from train.config.schema import MainConfig

from train.config.choices import Stage
from train.core.ranks import is_main_process


def optimizer_steps(args, rows: int, processes: int) -> dict:
    """Optimizer steps and the effective global batch of a stage, as the trainer will count them."""
    global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * processes
    per_epoch = math.ceil(rows / global_batch) if rows else 0
    steps = args.max_steps if args.max_steps > 0 else math.ceil(per_epoch * args.num_train_epochs)
    return {"optimizer_steps": steps, "global_batch": global_batch, "epochs": args.num_train_epochs,
            "warmup_steps": args.warmup_steps}


def plan_warnings(stage: str, plan: dict, rows: int) -> list[str]:
    """What a user would want to hear before a stage trains, not after: a stage of one optimizer step, and
    warmup that outlasts training (warmup_steps under 1 is a fraction of the steps in transformers 5)."""
    steps, warmup = plan["optimizer_steps"], plan["warmup_steps"]
    out = []
    if steps <= 1:
        out.append(f"warning: {stage} runs {steps} optimizer step(s) ({rows} rows, global batch {plan['global_batch']}): "
                   f"lower {stage}.args.per_device_train_batch_size or give it more data")
    if warmup >= 1 and warmup >= steps > 0:
        out.append(f"warning: {stage}.args.warmup_steps={warmup:g} >= its {steps} optimizer steps: the learning rate "
                   f"never reaches its peak; lower warmup_steps")
    return out


def count(n: float, noun: str) -> str:
    """`1 process`, `2 processes`, `1.5 epochs`."""
    shown = int(n) if float(n).is_integer() else n
    return f"{shown} {noun}" if n == 1 else f"{shown} {noun}es" if noun.endswith("s") else f"{shown} {noun}s"


def training_banner(stage: str, args, rows: int, processes: int, unit: str, details: str = "") -> str:
    """One line saying what a training stage is about to do, e.g. `== sft: training 188 optimizer steps on 1
    process (batch 32 x 1 accumulation x 1 process = 32 rows/step; 3000 rows, 2 epochs) ==`."""
    plan = optimizer_steps(args, rows, processes)
    length = f"max_steps {args.max_steps}" if args.max_steps > 0 else count(plan["epochs"], "epoch")
    batch = (f"batch {args.per_device_train_batch_size} x {args.gradient_accumulation_steps} accumulation x "
             f"{count(processes, 'process')} = {plan['global_batch']} {unit}/step; {rows} {unit}, {length}")
    return (f"== {stage}: training {count(plan['optimizer_steps'], 'optimizer step')} on {count(processes, 'process')} "
            f"({batch}){'; ' + details if details else ''} ==")


def eval_banner(prompts: int, processes: int, max_new_tokens: int, temperature: float, judge) -> str:
    return (f"== eval: sampling {count(prompts, 'held-out prompt')} from policy and reference on "
            f"{count(processes, 'process')} (up to {max_new_tokens} new tokens, temperature {temperature:g}), "
            f"judge: {judge or 'none'} ==")


def stage_details(cfg: MainConfig, stage: str) -> str:
    """What else decides how a stage trains: adapters, and for DPO beta, the reference and the ZeRO stage."""
    zero = deepspeed_text(cfg.deepspeed.stage, cfg.deepspeed.config)
    if stage == Stage.sft:
        return ", ".join(x for x in (f"LoRA r {cfg.sft.lora.r}" if cfg.sft.lora.enabled else "", zero) if x)
    if stage == Stage.reward:  # full fine-tuning of the classifier, from the SFT or the base model
        return f"from the {'SFT' if cfg.sft.enabled else 'base'} model, {zero}"
    return f"beta {cfg.beta.value:g} ({cfg.beta.schedule}), reference {cfg.dpo.reference}, {zero}"


def deepspeed_text(stage: int, config) -> str:
    if config is None:
        return "no DeepSpeed"
    zero = config.get("zero_optimization", {})
    offload = any((zero.get(k) or {}).get("device", "none") != "none" for k in ("offload_optimizer", "offload_param"))
    return f"ZeRO-{stage}{' with CPU offload' if offload else ''}"


def announce_training(stage: str, cfg: MainConfig, trainer, rows: int) -> None:
    """The stage's banner, then what a user would want to hear before it trains (main process only)."""
    if is_main_process():
        processes, unit = trainer.accelerator.num_processes, "pairs" if stage in (Stage.dpo, Stage.reward) else "rows"
        print(training_banner(stage, trainer.args, rows, processes, unit, stage_details(cfg, stage)), flush=True)
        for line in plan_warnings(stage, optimizer_steps(trainer.args, rows, processes), rows):
            print(line, flush=True)
