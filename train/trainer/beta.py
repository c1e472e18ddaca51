"""Beta schedules: beta as a function of the optimizer step (pure functions), applied by ProjectDPOTrainer."""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig

from train.core.errors import ConfigError


def constant(step: int, total: int, start: float, final: float | None, warmup: int) -> float:
    return start


def linear(step: int, total: int, start: float, final: float, warmup: int) -> float:
    progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    return start + (final - start) * progress


def cosine(step: int, total: int, start: float, final: float, warmup: int) -> float:
    progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    return final + (start - final) * 0.5 * (1 + math.cos(math.pi * progress))


SCHEDULES = {"constant": constant, "linear": linear, "cosine": cosine}  # beta.schedule: one conf/beta/*.yaml each


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


def check(beta: DictConfig) -> None:
    if beta.schedule not in SCHEDULES:
        raise ConfigError(f"beta.schedule={beta.schedule}: choose one of {', '.join(SCHEDULES)}")
