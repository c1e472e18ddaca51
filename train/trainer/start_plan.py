"""What the start check (train/pipeline/checks.py) built and the run then uses, so a run builds and checks each of
these once: the typed config, every stage's checked trainer settings, the beta schedule, the DPO micro-batch layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from train.config.schema import MainConfig
from train.config.trainer_args import StageArgs
from train.trainer.beta import BetaSchedule


@dataclass(frozen=True)
class StartPlan:
    args: Mapping[str, StageArgs]  # sft, dpo, reward
    beta_schedule: BetaSchedule | None  # None for beta=adaptive (a fresh per-batch rule for each trainer)
    layout: tuple[str, str | None] | None  # (layout, why auto fell back); None: decided on the loaded model
    checked: DictConfig = field(compare=False)  # the composed config the check passed

    # Converted on first use, once: a setting like ${hydra:job.name} resolves only inside Hydra's job, and the
    # entry point checks every combination of a multirun before Hydra starts (train/pipeline/checks.py).
    @cached_property
    def config(self) -> MainConfig:
        """The checked config as the schema's dataclasses (OmegaConf.to_object: Enums are members, *.args plain
        dicts, interpolations resolved): what the run's functions are handed, each the part it reads."""
        return OmegaConf.to_object(self.checked)

    @cached_property
    def resolved(self) -> Mapping[str, Any]:
        """The same config as a resolved plain container, key order as composed: what the run writes (config.yaml,
        the W&B config) and what a finished run's config.yaml is compared with."""
        return OmegaConf.to_container(self.checked, resolve=True)
