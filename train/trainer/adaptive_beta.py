"""beta=adaptive: beta-DPO (Wu et al., NeurIPS 2024, arXiv 2407.08639), beta set per batch from the batch's
own reward margins. The rule follows the paper's reference code (junkangwu/beta-DPO, trainers.py
`preference_loss` and `update_and_sync_tensor_mean`):

  M_i   = (log pi_c - log ref_c) - (log pi_r - log ref_r)      per pair, gathered over every rank
  M0, sigma <- momentum * (M0, sigma) + (1 - momentum) * (mean, std of this batch's M)
  keep (1 - rho) of the pairs, sampled without replacement with weights exp(-((M_i - M0) / sigma)^2 / 2)
  beta  = max(beta0 * (1 + alpha * (mean(M_kept) - M0)), 1e-3), never differentiated through

One deliberate difference: the reference code starts M0 and sigma at 0, so a batch of constant margins c moves
beta by beta0 * alpha * 0.9^t * c for many steps; here the first batch sets them, and constant margins keep
beta at beta0 from the first step (the issue's requirement).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

BETA_FLOOR = 1e-3  # the reference code's clamp: a negative or zero temperature would flip or void the loss
# Below this spread (nats) the margins are float noise, not signal: at the first DPO step the policy is its
# reference and every margin is 0 up to the fp32 summing order of the forward (~1e-6 here, and different
# for 1 x 16 and 2 x 8 pairs), so weighting by them would make the kept pairs depend on the batch layout.
SPREAD_FLOOR = 1e-3


@dataclass
class MarginStatistics:
    """Running statistics of the margins (the checkpointed state): `mean` is the paper's M0, `std` its sigma."""

    mean: float | None = None  # None: no batch seen yet
    std: float = 0.0
    beta: float | None = None  # the last batch's beta, logged and restored with the rest
    batches: int = 0  # batches seen: seeds the filter's sampling, so a resumed run draws what it would have


def update_statistics(stats: MarginStatistics, margins: torch.Tensor, momentum: float) -> MarginStatistics:
    """Moving average of the batch mean and (unbiased, as torch.std in the reference code) std of `margins`."""
    values = margins.detach().double().cpu()
    mean = values.mean().item()
    std = values.std().item() if values.numel() > 1 else 0.0
    if stats.mean is None:
        return MarginStatistics(mean, std, stats.beta, stats.batches + 1)
    return MarginStatistics(momentum * stats.mean + (1 - momentum) * mean,
                            momentum * stats.std + (1 - momentum) * std, stats.beta, stats.batches + 1)


def filter_weights(margins: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """exp(-((M_i - M0) / sigma)^2 / 2): pairs near the running mean are the likeliest kept. With sigma under
    SPREAD_FLOOR or every weight underflowing to 0, all pairs are equally likely."""
    values = margins.detach().double().cpu()
    if std > SPREAD_FLOOR:
        weights = torch.exp(-0.5 * ((values - mean) / std) ** 2)
        if torch.isfinite(weights).all() and weights.sum() > 0:
            return weights
    return torch.ones_like(values)


def kept_pairs(margins: torch.Tensor, stats: MarginStatistics, rho: float, generator: torch.Generator) -> torch.Tensor:
    """Boolean mask of the int(n * (1 - rho)) pairs (at least one) the filter keeps."""
    n = margins.numel()
    keep = torch.ones(n, dtype=torch.bool)
    count = max(int(n * (1 - rho)), 1)
    if count < n:
        chosen = torch.multinomial(filter_weights(margins, stats.mean, stats.std), count, replacement=False,
                                   generator=generator)
        keep = torch.zeros(n, dtype=torch.bool)
        keep[chosen] = True
    return keep


def batch_beta(beta0: float, alpha: float, kept_mean: float, running_mean: float) -> float:
    return max(beta0 * (1 + alpha * (kept_mean - running_mean)), BETA_FLOOR)


class AdaptiveBeta(TrainerCallback, ExportableState):
    """The rule's state across batches. Its statistics are saved in every checkpoint's trainer_state.json
    (transformers stores ExportableState callbacks there) and read back at on_train_begin on resume;
    transformers' own restore (restore_callback_states_from_checkpoint) is off by default and rebuilds
    callbacks, so this one restores itself."""

    def __init__(self, beta0: float, alpha: float, rho: float, momentum: float, seed: int) -> None:
        self.beta0, self.alpha, self.rho, self.momentum, self.seed = beta0, alpha, rho, momentum, seed
        self.stats = MarginStatistics(beta=beta0)

    @property
    def beta(self) -> float:
        return self.stats.beta if self.stats.beta is not None else self.beta0

    def step(self, margins: torch.Tensor) -> tuple[float, torch.Tensor]:
        """This batch's beta and per-pair loss weights from the margins of the whole (all-rank) batch.

        The weights are keep_i * n / n_kept: a rank's mean of weight * loss, averaged over ranks by the
        gradient all-reduce, is then the mean loss over the kept pairs of the global batch, whatever the
        number of processes."""
        stats = update_statistics(self.stats, margins, self.momentum)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + stats.batches)  # same on every rank
        keep = kept_pairs(margins, stats, self.rho, generator)
        kept_mean = margins.detach().double().cpu()[keep].mean().item()
        stats.beta = batch_beta(self.beta0, self.alpha, kept_mean, stats.mean)
        self.stats = stats
        weights = keep.double() * (keep.numel() / keep.sum().item())
        return stats.beta, weights.to(margins.dtype)

    def state(self) -> dict:
        return {"args": {"beta0": self.beta0, "alpha": self.alpha, "rho": self.rho, "momentum": self.momentum,
                         "seed": self.seed},
                "attributes": {"stats": asdict(self.stats)}}

    def on_train_begin(self, args, state, control, **kwargs):
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(saved, dict) and "stats" in saved.get("attributes", {}):
            self.stats = MarginStatistics(**saved["attributes"]["stats"])
        return control


def filtered_loss_correction(margins: torch.Tensor, weights: torch.Tensor, beta: float) -> torch.Tensor:
    """What turns TRL's sigmoid loss, mean_i -log sigmoid(beta * M_i), into the filtered mean_i w_i * (the same),
    with gradients through this rank's margins (`weights`: this rank's slice)."""
    losses = -F.logsigmoid(beta * margins)
    return ((weights.to(losses.device) - 1) * losses).mean()


def margin_mean_for_logs(stats: MarginStatistics) -> float:
    return stats.mean if stats.mean is not None else math.nan


class MarginProbe:
    """Stands in for the policy in one call of TRL's DPO loss (TRL 1.16 `_compute_loss` calls it once, then
    reads `trainer.beta`): when the policy's per-token log-probs come back, it sums them as TRL does, forms
    the margins with the batch's reference log-probs, gathers them, and sets `trainer.beta`, so this batch's
    beta is in place before the loss reads it, from the same forward (no second pass)."""

    def __init__(self, model, trainer, inputs: dict, controller: AdaptiveBeta) -> None:
        self.model, self.trainer, self.inputs, self.controller = model, trainer, inputs, controller
        self.correction = None  # filtering's change to TRL's loss (None: rho=0, nothing to change)
        self.stepped = False

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, *args, **kwargs):
        outputs = self.model(*args, **kwargs)
        if self.stepped:  # TRL's deprecated return_outputs path calls the model again, for logits only
            return outputs
        self.stepped = True
        seq_len = self.inputs["completion_mask"].size(1) - 1
        chosen, rejected = outputs.log_probs[:, -seq_len:].sum(dim=1).chunk(2, dim=0)  # TRL: [chosen, rejected]
        margins = (chosen - self.inputs["ref_chosen_logps"]) - (rejected - self.inputs["ref_rejected_logps"])
        accelerator = self.trainer.accelerator
        beta, weights = self.controller.step(accelerator.gather(margins.detach().float()))
        self.trainer.beta = beta
        if self.controller.rho > 0:
            n = margins.numel()
            local = weights[accelerator.process_index * n:(accelerator.process_index + 1) * n]
            self.correction = filtered_loss_correction(margins, local, beta)
        return outputs

    def filtered(self, loss: torch.Tensor) -> torch.Tensor:
        return loss if self.correction is None else loss + self.correction


@contextmanager
def margin_probe(trainer, model, inputs: dict) -> Iterator[MarginProbe]:
    """The probe to hand TRL's loss in place of `model`, with the reference log-probs in the batch."""
    computed = reference_logps_into_batch(trainer, model, inputs)
    saved = trainer.precompute_ref_logps
    trainer.precompute_ref_logps = saved or computed
    try:
        yield MarginProbe(model, trainer, inputs, trainer.adaptive_beta)
    finally:
        trainer.precompute_ref_logps = saved


def reference_logps_into_batch(trainer, model, inputs: dict) -> bool:
    """With dpo.reference=model or lora the reference log-probs are computed in the loss, after the policy's:
    compute them first (TRL's compute_ref_log_probs: the frozen copy, or the policy with adapters disabled)
    and put them in the batch. Returns True when it did; the caller then has TRL read them from the batch
    (precompute_ref_logps) instead of running the reference forward a second time."""
    if "ref_chosen_logps" in inputs:
        return False
    reference = trainer.ref_model if trainer.ref_model is not None else model
    inputs["ref_chosen_logps"], inputs["ref_rejected_logps"] = trainer.compute_ref_log_probs(reference, inputs)
    return True
