"""What a stage will do, from its trainer arguments and its rows: optimizer steps, the global batch, and the
settings a user would want to hear about before it trains (make dry-run prints them; each stage says them at start)."""

from __future__ import annotations

import math

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


def warn_before_training(stage: str, trainer, rows: int) -> None:
    if is_main_process():
        for line in plan_warnings(stage, optimizer_steps(trainer.args, rows, trainer.accelerator.num_processes), rows):
            print(line, flush=True)
