"""Settings an `accelerate launch --config_file` brings that this project sets elsewhere: refused at start,
in one line, instead of a DeepSpeed/TrainingArguments bf16 mismatch after minutes or a checkpoint without
optimizer.pt after training (TRL's accelerate configs set distributed_type DEEPSPEED and mixed_precision bf16).

Two readers, one set of rules: `make train NPROC=N` reads the config file before accelerate starts any process
(launch/check_nproc.py), so the refusal is one line and nothing else; inside the processes the same rules read
the environment accelerate passes them. There, every process finds the problem and exits 2, and accelerate's
launcher then reports the failed processes in a traceback of its own (torch elastic's ChildFailedError for
N processes, subprocess.CalledProcessError for one) that no exit of ours can avoid: `accelerate launch -q` or
`make train` keeps it out."""

from __future__ import annotations

import os
from dataclasses import dataclass

from train.core.errors import ConfigError

OURS = "launch with --config_file launch/accelerate/single_node.yaml (multi_node.yaml across nodes)"


@dataclass(frozen=True)
class LaunchSettings:
    """What an accelerate config asks of the launch, as far as the rules below care."""

    deepspeed: bool = False
    zero_stage: str = "N"
    fsdp: bool = False
    # accelerate's simple launcher (distributed_type NO or MULTI_CPU without mpirun) starts one
    # process however many were asked for: the run would silently train on one.
    one_process_for_many: bool = False
    mixed_precision: str = "no"


def launcher_problem(settings: LaunchSettings) -> str | None:
    if settings.deepspeed:
        return (f"the accelerate config sets distributed_type DEEPSPEED: here DeepSpeed comes from the deepspeed "
                f"group; {OURS} and add deepspeed=zero{settings.zero_stage}")
    if settings.fsdp:
        return (f"the accelerate config sets distributed_type FSDP, which this project does not run; {OURS} and shard "
                "with the deepspeed group (deepspeed=zero3)")
    if settings.one_process_for_many:
        return (f"the accelerate config asks for several CPU processes (distributed_type MULTI_CPU or use_cpu), which "
                f"accelerate starts as one process without mpirun; {OURS} and --num_processes N (gloo on a CPU), or "
                "make train NPROC=N")
    if settings.mixed_precision not in ("no", ""):
        precision = settings.mixed_precision
        return (f"the accelerate config sets mixed_precision {precision}: here precision comes from the trainer args; "
                f"{OURS} and set sft.args.{precision}=true dpo.args.{precision}=true")
    return None


def settings_from_environment() -> LaunchSettings:
    """As the processes see it: accelerate passes the config as ACCELERATE_* variables."""
    env = os.environ
    return LaunchSettings(
        deepspeed=env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true",
        zero_stage=env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") or "N",
        fsdp=env.get("ACCELERATE_USE_FSDP", "").lower() == "true",
        # The simple launcher sets MASTER_ADDR when num_processes > 1 but no WORLD_SIZE (torchrun would).
        one_process_for_many=env.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in env
        and "WORLD_SIZE" not in env,
        mixed_precision=env.get("ACCELERATE_MIXED_PRECISION", "no"),
    )


def settings_from_config_file(path: str, num_processes: int) -> LaunchSettings:
    """As the file says, read by accelerate's own loader (YAML or JSON), for a launch of `num_processes`
    (the command line's --num_processes wins over the file's, as in `make train NPROC=N`)."""
    from accelerate.commands.config.config_args import load_config_from_file  # deferred: imports torch
    from accelerate.utils import DistributedType  # deferred: as above

    if not os.path.isfile(path):
        raise ConfigError(f"ACCELERATE_CONFIG={path}: no such file; use launch/accelerate/single_node.yaml (the default)")
    try:
        config = load_config_from_file(path)
    except Exception as err:  # accelerate's loader: a YAML error, an unknown key (TypeError), a bad enum value
        raise ConfigError(f"ACCELERATE_CONFIG={path}: accelerate cannot read it ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); use launch/accelerate/single_node.yaml")
    kind = getattr(config, "distributed_type", DistributedType.NO)
    deepspeed_config = getattr(config, "deepspeed_config", None) or {}
    # accelerate picks torchrun for MULTI_GPU even with use_cpu: true (its --cpu flag, not the file's key, decides)
    simple_launcher = kind in (DistributedType.NO, DistributedType.MULTI_CPU)
    return LaunchSettings(
        deepspeed=kind == DistributedType.DEEPSPEED,
        zero_stage=str(deepspeed_config.get("zero_stage", "N")),
        fsdp=kind == DistributedType.FSDP,
        one_process_for_many=num_processes > 1 and simple_launcher and not getattr(config, "mpirun_config", None),
        mixed_precision=str(getattr(config, "mixed_precision", None) or "no"),
    )


def check_launcher_settings() -> None:
    problem = launcher_problem(settings_from_environment())
    if problem:
        raise ConfigError(problem)

