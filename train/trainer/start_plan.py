"""What the start check (train/pipeline/checks.py) built and the run's trainers then use, so a run builds and
checks each of these once: every stage's checked trainer settings, the beta schedule, the DPO micro-batch layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig

from train.config.choices import Stage
from train.config.trainer_args import StageArgs, trl_config
from train.trainer import beta
from train.trainer.beta import BetaSchedule


@dataclass(frozen=True)
class StartPlan:
    args: Mapping[str, StageArgs]  # sft, dpo, reward
    beta_schedule: BetaSchedule | None  # None for beta=adaptive (a fresh per-batch rule for each trainer)
    layout: tuple[str, str | None] | None  # (layout, why auto fell back); None: decided on the loaded model


def stage_config(cfg: DictConfig, stage: Stage, plan: StartPlan | None, output_dir: Path,
                 extra: dict[str, Any] | None = None):
    """The TRL config of `stage`'s trainer: from the start check's settings, or, for a trainer built without the
    start check (the benchmarks, the GPU check), from `cfg`."""
    if plan is not None:
        return plan.args[stage].build(output_dir, extra)
    return trl_config(cfg, stage, output_dir, extra)


def beta_schedule(cfg: DictConfig, plan: StartPlan | None) -> BetaSchedule | None:
    if plan is not None:
        return plan.beta_schedule
    beta.check(cfg.beta)
    return beta.schedule(cfg.beta)
