"""ProjectDPOTrainer: TRL's DPOTrainer plus what a long preference run needs (each addition says why)."""

from __future__ import annotations

import math
from pathlib import Path

from trl import DPOTrainer

from train import seams
from train.core.errors import TrainingAborted
from train.runtime import faults
from train.runtime.distributed import any_rank_flagged
from train.trainer import logps
from train.trainer.adaptive_beta import AdaptiveBeta, margin_mean_for_logs, margin_probe
from train.trainer.beta import BetaSchedule
from train.trainer.reference_cache import precompute_with_cache
from train.config.choices import Batching


class BadStep(Exception):
    """Raised by compute_loss for a NaN/inf training loss; training_step then skips the backward pass."""

    def __init__(self, loss) -> None:
        super().__init__("non-finite loss")
        self.loss = loss


class ProjectDPOTrainer(seams.ReferencePassHook, DPOTrainer):
    """Keyword arguments on top of DPOTrainer's:
        beta_schedule        beta at every step (beta group); None keeps args.beta
        adaptive_beta        beta=adaptive: beta set per batch from its margins (beta-DPO); None: off
        max_bad_steps        consecutive NaN/inf-loss steps skipped before TrainingAborted
        reference_cache_dir  where precomputed reference log-probs are kept for a whole sweep; None: TRL's own
        batching             dpo.batching: the micro-batch layout asked for (auto, padded, packed, prefix_shared), no
                             default here: the config's is the one (conf/dpo/default.yaml); `batch_layout` is the one in
                             use once the model is loaded (train/trainer/logps.py)
        resolved_layout      what the start check resolved `batching` to (train/trainer/layouts.py check); None:
                             resolved on the loaded model
    """

    def __init__(self, *args, beta_schedule: BetaSchedule | None = None, adaptive_beta: AdaptiveBeta | None = None,
                 max_bad_steps: int = 3, reference_cache_dir: Path | None = None, batching: Batching,
                 resolved_layout: tuple[str, str | None] | None = None, **kwargs):
        # Set before DPOTrainer.__init__: it runs the reference pass (reference_pass below) itself.
        self.beta_schedule, self.max_bad_steps, self.reference_cache_dir = beta_schedule, max_bad_steps, reference_cache_dir
        self.bad_steps_total, self.bad_steps_in_a_row = 0, 0
        self.batching, self.resolved_layout, self.batch_layout = batching, resolved_layout, None
        super().__init__(*args, **kwargs)
        self.install_layout()
        # The reference log-probs of the train and eval sets are in place by now: TRL's inference engine for the
        # reference pass is not needed again (19.3M Llama, 2 ranks, ZeRO-3, 12 steps, 3 alternating runs:
        # training 19.5 s vs 22.0 s, peak RSS ~70 MB lower per rank, same losses).
        seams.release_precompute_engine(self)
        self.adaptive_beta = adaptive_beta
        if adaptive_beta is not None:
            self.add_callback(adaptive_beta)  # before train(): transformers saves its state in every checkpoint

    # dpo.reference=precomputed: TRL's reference pass, behind a cache whose key also covers truncation,
    # padding and the chat template, kept in <output_root>/ref_cache for a whole sweep.
    def reference_pass(self, compute, dataset, name: str, batch_size: int):
        self.install_layout()  # the reference pass, too, runs in the layout
        if self.reference_cache_dir is None:
            return compute(dataset, name, batch_size)
        return precompute_with_cache(self, compute, dataset, name, batch_size, self.reference_cache_dir)

    # dpo.batching: TRL's fused LM-head forward, wrapped to run in the layout. Installed once TRL has
    # added its head, which is before its reference pass inside DPOTrainer.__init__, hence the call from both.
    def install_layout(self) -> None:
        if self.batch_layout is None:
            self.batch_layout = logps.install(self, self.batching, self.resolved_layout)

    # Beta schedules: TRL reads `self.beta` in the loss at every step, so setting it before each step is
    # all a schedule needs. A NaN/inf loss must not reach the weights: its backward is skipped, which leaves
    # no gradients, so the optimizer changes nothing (DDP/AdamW skip params without grads; DeepSpeed steps
    # inside backward). transformers has no hook between the loss and backward, hence the BadStep exception.
    def training_step(self, *args, **kwargs):
        if self.beta_schedule is not None:
            self.beta = self.beta_schedule.at(self.state.global_step, self.state.max_steps)
        try:
            return super().training_step(*args, **kwargs)
        except BadStep as bad:
            return bad.loss.detach()

    # beta=adaptive: TRL's loss gets a probe in place of the policy that sets self.beta from this batch's
    # margins as soon as the forward returns, before the loss reads it; filtering (beta.rho) then corrects
    # the loss to the mean over the kept pairs (train/trainer/adaptive_beta.py).
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.adaptive_beta is not None and model.training:
            with margin_probe(self, model, inputs) as probe:
                result = super().compute_loss(probe, inputs, return_outputs, num_items_in_batch)
            result = (probe.filtered(result[0]), *result[1:]) if return_outputs else probe.filtered(result)
        else:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = result[0] if return_outputs else result
        if model.training:
            loss = faults.poison_loss(loss, self.state.global_step + 1)
            bad = any_rank_flagged(not math.isfinite(loss.item()))  # every rank skips, or none
            self.count_bad_step(bad)
            if bad:
                raise BadStep(loss)
        return (loss, *result[1:]) if return_outputs else loss

    def count_bad_step(self, bad: bool) -> None:
        if not bad:
            self.bad_steps_in_a_row = 0
            return
        self.bad_steps_total += 1
        self.bad_steps_in_a_row += 1
        step = self.state.global_step + 1
        print(f"faults: loss is NaN/inf at step {step}; step skipped ({self.bad_steps_in_a_row} in a row)", flush=True)
        if self.bad_steps_in_a_row >= self.max_bad_steps:
            raise TrainingAborted(
                f"loss was NaN/inf for {self.bad_steps_in_a_row} consecutive steps (last at step {step}); "
                "lower dpo.args.learning_rate, check the data, or raise faults.max_bad_steps"
            )

    # beta and the skipped-step count are logged inside `log` (not a callback) so they land in the same
    # record W&B receives.
    def log(self, logs: dict, *args, **kwargs) -> None:
        logs["beta"] = self.beta
        if self.adaptive_beta is not None:
            logs["beta_margin_mean"] = margin_mean_for_logs(self.adaptive_beta.stats)  # M0; W&B: train/beta_margin_mean
        logs["bad_steps"] = self.bad_steps_total
        super().log(logs, *args, **kwargs)
