"""Beta schedules: beta as a function of the optimizer step (pure functions), applied by ProjectDPOTrainer;
and beta=adaptive, set per batch from the batch's margins (adaptive_beta.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from train.core.errors import ConfigError
from train.trainer.adaptive_beta import AdaptiveBeta
from train.config.choices import BetaSchedule
from train.config.schema import BetaConfig


def constant(step: int, total: int, start: float, final: float | None, warmup: int) -> float:
    return start


def linear(step: int, total: int, start: float, final: float, warmup: int) -> float:
    progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    return start + (final - start) * progress


def cosine(step: int, total: int, start: float, final: float, warmup: int) -> float:
    progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    return final + (start - final) * 0.5 * (1 + math.cos(math.pi * progress))


SCHEDULES = {BetaSchedule.constant: constant, BetaSchedule.linear: linear, BetaSchedule.cosine: cosine}
# beta=adaptive is no function of the step: train/trainer/adaptive_beta.py sets beta from each batch's margins.
ADAPTIVE = BetaSchedule.adaptive
KINDS = tuple(BetaSchedule)
# What the adaptive rule assumes of TRL's loss: its margins are the sigmoid loss's argument (reverse KL), summed
# log-probs; filtering corrects `mean -log sigmoid(beta * M)` and nothing else.
ADAPTIVE_LOSS = {"loss_type": ("sigmoid", ["sigmoid"]), "f_divergence_type": ("reverse_kl",),
                 "ld_alpha": (None,), "use_weighting": (False,), "loss_weights": (None, [1.0], [1])}


@dataclass(frozen=True)
class BetaSchedule:
    schedule: str = "constant"
    value: float = 0.1
    final: float | None = None
    warmup_steps: int = 0

    @classmethod
    def from_config(cls, beta: DictConfig) -> "BetaSchedule":
        check(beta)
        return cls(beta.schedule, beta.value, beta.final, beta.warmup_steps)

    def at(self, step: int, total_steps: int) -> float:
        return SCHEDULES[self.schedule](step, total_steps, self.value, self.final, self.warmup_steps)


def adaptive(beta: BetaConfig, seed: int) -> AdaptiveBeta | None:
    """The per-batch rule for beta=adaptive (None for the step schedules)."""
    if beta.schedule != ADAPTIVE:
        return None
    return AdaptiveBeta(beta.value, beta.alpha, beta.rho, beta.momentum, seed)


def schedule(beta: DictConfig) -> BetaSchedule | None:
    """The step schedule of a beta group that `check` accepted (None for beta=adaptive: TRL starts from args.beta =
    beta.value, then each batch sets it). The start check builds it once; the trainers take it from there."""
    if beta.schedule == ADAPTIVE:
        return None
    return BetaSchedule(beta.schedule, beta.value, beta.final, beta.warmup_steps)


def check(beta: DictConfig, dpo_args: DictConfig | None = None) -> None:
    if beta.schedule not in KINDS:
        raise ConfigError(f"beta.schedule={beta.schedule}: choose one of {', '.join(KINDS)}")
    if beta.schedule != ADAPTIVE:
        return
    if beta.alpha < 0:
        raise ConfigError(f"beta.alpha={beta.alpha}: must be >= 0 (paper: 0.6; 0 keeps beta at beta.value)")
    if not 0 <= beta.rho < 1:
        raise ConfigError(f"beta.rho={beta.rho}: the share of pairs filtered out must be in [0, 1) (paper: 0.2; 0 = off)")
    if not 0 <= beta.momentum < 1:
        raise ConfigError(f"beta.momentum={beta.momentum}: must be in [0, 1) (paper: 0.9)")
    for key, allowed in ADAPTIVE_LOSS.items():
        value = (dpo_args or {}).get(key, allowed[0])
        value = list(value) if OmegaConf.is_list(value) else value
        if value not in allowed:
            raise ConfigError(f"dpo.args.{key}={value}: beta=adaptive is defined for the sigmoid DPO loss "
                              f"(beta-DPO); remove dpo.args.{key} or pick another beta")
