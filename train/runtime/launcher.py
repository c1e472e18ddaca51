"""Settings an `accelerate launch --config_file` brings that this project sets elsewhere: refused at start,
in one line, instead of a DeepSpeed/TrainingArguments bf16 mismatch after minutes or a checkpoint without
optimizer.pt after training (TRL's accelerate configs set distributed_type DEEPSPEED and mixed_precision bf16).
accelerate passes them to the processes as environment variables."""

from __future__ import annotations

import os

from train.core.errors import ConfigError

OURS = "launch with --config_file launch/accelerate/single_node.yaml (multi_node.yaml across nodes)"


def check_launcher_settings() -> None:
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") or "N"
        raise ConfigError(f"the accelerate config sets distributed_type DEEPSPEED: here DeepSpeed comes from the "
                          f"deepspeed group; {OURS} and add deepspeed=zero{stage}")
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        raise ConfigError(f"the accelerate config sets distributed_type FSDP, which this project does not run; {OURS} "
                          "and shard with the deepspeed group (deepspeed=zero3)")
    # accelerate's MULTI_CPU / use_cpu configs start one process without mpirun (its simple launcher), setting
    # MASTER_ADDR because num_processes > 1 but no WORLD_SIZE: N processes were asked for and one would run.
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in os.environ \
            and "WORLD_SIZE" not in os.environ:
        raise ConfigError(f"the accelerate config asks for several CPU processes (distributed_type MULTI_CPU or "
                          f"use_cpu), which accelerate starts as one process without mpirun; {OURS} and "
                          f"--num_processes N (gloo on a CPU), or make train NPROC=N")
    precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if precision not in ("no", ""):
        raise ConfigError(f"the accelerate config sets mixed_precision {precision}: here precision comes from the trainer "
                          f"args; {OURS} and set sft.args.{precision}=true dpo.args.{precision}=true")
