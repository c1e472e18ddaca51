"""Our DPOTrainer: TRL's, plus what a long preference run needs (each addition says why)."""

from __future__ import annotations

import math

from omegaconf import DictConfig

from train.beta import beta_at


class TrainingAborted(RuntimeError):
    """Training cannot go on (e.g. the loss stays NaN); the message is one line that says what to do."""


def dpo_trainer_class(cfg: DictConfig):
    from trl import DPOTrainer

    from train import faults
    from train.preemption import any_rank_flagged

    class ProjectDPOTrainer(DPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # Under ZeRO-3 TRL 1.16 runs the reference pass through a DeepSpeed inference engine around the
            # policy and keeps it, so its parameter hooks would fire next to the training engine's in every
            # step. The reference log-probs of the train and eval sets are in place by now: release it
            # (19.3M Llama, 2 ranks, 12 steps, 3 alternating runs: training 19.5 s vs 22.0 s, peak RSS ~70 MB
            # lower per rank, same losses).
            engine = getattr(self, "_precompute_engine", None)
            if engine is not None:
                engine.destroy()
                self._precompute_engine = None
            self.bad_steps_total, self.bad_steps_in_a_row, self._skip_backward = 0, 0, False
            # A NaN/inf loss must not reach the weights. transformers offers no hook between the loss and
            # backward, so backward is wrapped: skipping it leaves no gradients, the optimizer then
            # changes nothing (DDP/AdamW skip params without grads; DeepSpeed steps inside backward).
            backward = self.accelerator.backward

            def guarded_backward(loss, **kw):
                if not self._skip_backward:
                    backward(loss, **kw)

            self.accelerator.backward = guarded_backward

        # Beta schedules (beta group): TRL reads `self.beta` in the loss at every step, so setting it
        # before each step is all a schedule needs.
        def training_step(self, *args, **kwargs):
            self.beta = beta_at(cfg.beta, self.state.global_step, self.state.max_steps)
            return super().training_step(*args, **kwargs)

        # dpo.reference=precomputed: TRL's reference pass, behind a cache whose key also covers truncation,
        # padding and the chat template, kept in <output_root>/ref_cache for a whole sweep (issue 7).
        def _precompute_ref_logps(self, dataset, name, batch_size):
            from pathlib import Path

            from train.reference_cache import precompute_with_cache

            compute = super()._precompute_ref_logps
            directory = Path(cfg.output_root).resolve() / "ref_cache"
            return precompute_with_cache(self, compute, dataset, name, batch_size, directory)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = result[0] if return_outputs else result
            if model.training:
                loss = faults.poison_loss(loss, self.state.global_step + 1)
                self._skip_backward = any_rank_flagged(not math.isfinite(loss.item()))
                self._count_bad_step()
            return (loss, *result[1:]) if return_outputs else loss

        def _count_bad_step(self) -> None:
            if not self._skip_backward:
                self.bad_steps_in_a_row = 0
                return
            self.bad_steps_total += 1
            self.bad_steps_in_a_row += 1
            step = self.state.global_step + 1
            print(f"faults: loss is NaN/inf at step {step}; step skipped ({self.bad_steps_in_a_row} in a row)", flush=True)
            if self.bad_steps_in_a_row >= cfg.faults.max_bad_steps:
                raise TrainingAborted(
                    f"loss was NaN/inf for {self.bad_steps_in_a_row} consecutive steps (last at step {step}); "
                    "lower dpo.args.learning_rate, check the data, or raise faults.max_bad_steps"
                )

        # beta and the skipped-step count are logged inside `log` (not a callback) so they land in the
        # same record W&B receives.
        def log(self, logs: dict, *args, **kwargs) -> None:
            logs["beta"] = self.beta
            logs["bad_steps"] = self.bad_steps_total
            super().log(logs, *args, **kwargs)

    return ProjectDPOTrainer
