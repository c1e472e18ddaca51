"""One DPO training step traced on fake tensors: the check on the analytic plan (train/memory/estimate.py).

The model is built from its architecture numbers under torch's FakeTensorMode (shapes and dtypes, no
storage: an 8B model costs no memory), given TRL's own fused LM head (trl.trainer.utils.add_fused_lm_head,
as DPOTrainer adds it), and run through TRL's DPO step: chosen and rejected concatenated into one batch,
per-sequence log-probs, the sigmoid loss against reference log-probs (precomputed, or a no-grad forward of a
reference copy), backward and an AdamW step. torch's MemTracker attributes every tensor alive at the peak to
parameters, gradients, optimizer states, activations or temporaries. One warm-up step runs first, untracked,
so gradients and Adam's moments already exist: the steady state of gradient accumulation.

The fake tensors live on the CPU, so TRL's fused head takes its torch fold (the plan's `triton=False`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker
from transformers import AutoModelForCausalLM
from trl.trainer.utils import add_fused_lm_head

from train.core.errors import ConfigError
from train.memory.architecture import Architecture, transformers_config
from train.memory.estimate import Setting
from train.config.choices import Reference, ZeroOption

# torch exports neither class publicly (checked in torch 2.13; tests/test_seams.py keeps a canary).
# FakeTensorMode gives tensors shapes and dtypes but no storage (an 8B step traced with no memory);
# MemTracker attributes the live tensors at a step's peak to parameters, gradients, optimizer states and
# activations.


def fake_tensor_mode():
    """A fresh `torch._subclasses.fake_tensor.FakeTensorMode` (use as a context manager)."""
    return FakeTensorMode()


def memory_tracker():
    """A fresh `torch.distributed._tools.mem_tracker.MemTracker` (use as a context manager; `.get_tracker_snapshot()`)."""
    return MemTracker()


# What DPOTrainer asks of its fused head (trl/trainer/dpo_trainer.py, use_weighting off).
DPO_HEAD_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")
DTYPES = {2: torch.bfloat16, 4: torch.float32}


@dataclass(frozen=True)
class TracedStep:
    peak: int  # bytes of all tensors alive at the step's peak
    states: int  # parameters, gradients and optimizer states before the step (the model states)
    by_kind: dict[str, int]  # the peak by MemTracker category: Parameter, Gradient, Optstate, Activation, Temp, ...


def trace_dpo_step(arch: Architecture, s: Setting, beta: float = 0.1) -> TracedStep:
    """Peak memory of one DPO step of `s` on a single device (no sharding: `s.zero` must be "none")."""
    if s.zero != ZeroOption.none or s.reference == Reference.lora:
        raise ConfigError("the fake-tensor trace covers a single device without DeepSpeed or LoRA")
    numbers = {k: getattr(arch, k) for k in ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size",
                                             "num_attention_heads", "num_key_value_heads", "vocab_size",
                                             "tie_word_embeddings")}
    config = transformers_config(numbers)
    with fake_tensor_mode():
        policy = build(config, s)
        # The reference keeps requires_grad (MemTracker hooks every parameter's gradient) but runs under no_grad.
        reference = build(config, s) if s.reference == Reference.model else None
        optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6)
        input_ids = torch.randint(0, arch.vocab_size, (s.sequences, s.max_length))
        batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids}
        precomputed = torch.zeros(s.sequences)

        def step() -> None:
            logps = policy(**batch, fused_lm_head=True, use_cache=False).log_probs.sum(dim=1)
            if reference is None:
                ref_logps = precomputed
            else:
                with torch.no_grad():
                    ref_logps = reference(**batch, fused_lm_head=True, use_cache=False).log_probs.sum(dim=1)
            chosen, rejected = (logps - ref_logps).chunk(2)  # the batch is [chosen, rejected], as TRL builds it
            F.logsigmoid(beta * (chosen - rejected)).neg().mean().backward()
            optimizer.step()

        step()
        tracker = memory_tracker()
        tracker.track_external(policy, optimizer, *[m for m in (reference,) if m is not None])
        with tracker:
            states = current_total(tracker)
            step()
    (peak,) = tracker.get_tracker_snapshot("peak").values()
    by_kind = {str(getattr(k, "value", k)): v for k, v in peak.items() if k != "Total"}
    return TracedStep(peak=peak["Total"], states=states, by_kind=by_kind)


def build(config, s: Setting):
    model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[s.weight_bytes], attn_implementation="sdpa")
    add_fused_lm_head(model, outputs=DPO_HEAD_OUTPUTS)
    if s.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def current_total(tracker) -> int:
    snapshot = tracker.get_tracker_snapshot("current")
    return sum(device["Total"] for device in snapshot.values())
