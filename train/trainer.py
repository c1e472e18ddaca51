"""Our DPOTrainer: TRL's, plus what a long preference run needs (each addition says why)."""

from __future__ import annotations

from omegaconf import DictConfig

from train.beta import beta_at


def dpo_trainer_class(cfg: DictConfig):
    from trl import DPOTrainer

    class ProjectDPOTrainer(DPOTrainer):
        # Beta schedules (beta group): TRL reads `self.beta` in the loss at every step, so setting it
        # before each step is all a schedule needs; it is logged inside `log` (not a callback) so it
        # lands in the same record W&B receives.
        def training_step(self, *args, **kwargs):
            self.beta = beta_at(cfg.beta, self.state.global_step, self.state.max_steps)
            return super().training_step(*args, **kwargs)

        def log(self, logs: dict, *args, **kwargs) -> None:
            logs["beta"] = self.beta
            super().log(logs, *args, **kwargs)

    return ProjectDPOTrainer
