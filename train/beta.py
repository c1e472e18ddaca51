"""Beta schedules: beta as a function of the optimizer step (pure functions), applied by a DPOTrainer subclass."""

from __future__ import annotations

import math

from omegaconf import DictConfig


def constant(step: int, total: int, start: float, final: float | None, warmup: int) -> float:
    return start


def linear(step: int, total: int, start: float, final: float, warmup: int) -> float:
    progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    return start + (final - start) * progress


def cosine(step: int, total: int, start: float, final: float, warmup: int) -> float:
    progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    return final + (start - final) * 0.5 * (1 + math.cos(math.pi * progress))


SCHEDULES = {"constant": constant, "linear": linear, "cosine": cosine}


def beta_at(cfg_beta: DictConfig, step: int, total_steps: int) -> float:
    schedule = SCHEDULES[cfg_beta.schedule]
    return schedule(step, total_steps, cfg_beta.value, cfg_beta.final, cfg_beta.warmup_steps)
