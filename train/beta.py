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


def make_scheduled_dpo_trainer(cfg_beta: DictConfig):
    """A DPOTrainer whose beta follows the schedule and is logged with every metric line.

    TRL reads `self.beta` in the loss at every step, so setting it before each step is all a schedule
    needs; logging it inside `log` (not a callback) puts it in the same record W&B receives.
    """
    from trl import DPOTrainer

    class ScheduledBetaDPOTrainer(DPOTrainer):
        def training_step(self, *args, **kwargs):
            self.beta = beta_at(cfg_beta, self.state.global_step, self.state.max_steps)
            return super().training_step(*args, **kwargs)

        def log(self, logs: dict, *args, **kwargs) -> None:
            logs["beta"] = self.beta
            super().log(logs, *args, **kwargs)

    return ScheduledBetaDPOTrainer
