"""The DPO forward in a non-padded layout, behind TRL's own fused-LM-head interface.

TRL 1.16's DPOTrainer gets every per-token number it uses (log-probs for all loss types, entropy, logits/*,
mean_token_accuracy, the WPO weights) from one call, `model(input_ids, attention_mask, labels, fused_lm_head=True)`,
for the policy step, the reference forward and the precomputed reference pass alike (`add_fused_lm_head` patches
`model.forward` for it). We wrap that forward once more: the padded batch is laid out (train/trainer/layouts.py),
the backbone runs on the layout, the hidden states are gathered at the response positions only, and the LM head
with its log-softmax runs there in token chunks with TRL's chunked kernel (`trl.kernels.ChunkedLogProbFunction`:
vocabulary tiles, logsumexp in fp32, tiles recomputed in the backward), so no [tokens x vocab] tensor exists for
the batch. The results go back into TRL's [2B, T-1] shape, and TRL's loss and metric code runs unchanged.
"""

from __future__ import annotations

import functools
import types

import torch
from accelerate.utils import is_peft_model
from trl.kernels import ChunkedLogProbFunction
from trl.trainer.utils import FusedCausalLMOutput, maybe_gather_lm_head_ctx

from train import seams
from train.trainer import layouts
from train.config.choices import Batching

# The per-token fields TRL 1.16's DPOTrainer asks its policy's fused head for (dpo_trainer.py, before
# add_fused_lm_head); the reference's head computes log-probs only.
POLICY_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")
REFERENCE_OUTPUTS = ("log_probs",)
# TRL's fused head uses 32768-wide vocabulary tiles (trl/trainer/utils.py): the same tiles give the same fp32
# rounding of the logsumexp as the padded layout.
VOCAB_TILE = 32768
# Response tokens per LM-head call: bounds the kernel's [tokens x VOCAB_TILE] tile to 128 MiB in fp32.
TOKEN_CHUNK = 1024
# What TRL passes to the fused forward besides labels; anything else (images, router logits) stays on TRL's path.
LAYOUT_KWARGS = {"input_ids", "attention_mask", "use_cache"}


def score_tokens(model, hidden: torch.Tensor, target: torch.Tensor, outputs: tuple[str, ...]) -> list:
    """TRL's five per-token fields (log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1; None where not in
    `outputs`) for hidden states [N, H] and their next tokens [N]."""
    lm_head = model.get_output_embeddings()
    weight, bias = lm_head.weight, lm_head.bias
    chunks = []
    # ZeRO-3: the head's weight is read directly, not through its module, so it is gathered here (as TRL does).
    with maybe_gather_lm_head_ctx(weight, bias):
        for start in range(0, max(len(target), 1), TOKEN_CHUNK):
            chunks.append(ChunkedLogProbFunction.apply(hidden[start:start + TOKEN_CHUNK], weight, bias,
                                                       target[start:start + TOKEN_CHUNK], 1.0, VOCAB_TILE, None, 1.0,
                                                       outputs))
    return [None if chunks[0][k] is None else torch.cat([c[k] for c in chunks]) for k in range(5)]


def to_padded(values: torch.Tensor | None, dest: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """Scatter per-token values into TRL's [2B, T-1] layout, zero elsewhere (as its fused head leaves them)."""
    if values is None:
        return None
    flat = torch.zeros(shape.numel(), dtype=values.dtype, device=values.device)
    return flat.index_copy(0, dest, values).view(shape)


def layout_forward(model, layout_name: str, outputs: tuple[str, ...], input_ids: torch.Tensor,
                   attention_mask: torch.Tensor, labels: torch.Tensor, kind: str | None = None) -> FusedCausalLMOutput:
    """`kind`: how the model's attention is told the sequences apart (layouts.MASK_KINDS; by default the one of its
    attention implementation). Varlen: one row, no mask, the boundaries in the position ids."""
    kind = kind or layouts.MASK_KINDS[seams.attn_implementation(model.config)]
    layout = layouts.build(layout_name, input_ids, attention_mask, labels, one_row=kind == layouts.VARLEN)
    mask = None if kind == layouts.VARLEN else layout.attention_mask(kind, model.dtype)
    hidden = model.base_model(input_ids=layout.input_ids, attention_mask=mask, position_ids=layout.position_ids,
                              use_cache=False).last_hidden_state
    hidden = hidden.reshape(-1, hidden.size(-1))[layout.source]
    fields = score_tokens(model, hidden, layout.target, outputs)
    shape = labels[:, 1:].shape
    log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1 = (to_padded(f, layout.dest, shape) for f in fields)
    label_mask = labels[:, 1:] != -100
    return FusedCausalLMOutput(
        loss=-log_probs.sum() / label_mask.sum().clamp(min=1),
        log_probs=log_probs, entropy=entropy, log_sum_sq_probs=log_sum_sq_probs, mean_logits=mean_logits,
        is_top1=is_top1, label_mask=label_mask,
    )


def wrap_forward(model, layout_name: str, outputs: tuple[str, ...]) -> None:
    """Route `model(..., fused_lm_head=True)` through `layout_name`; set_layout switches it later. Every other
    call (generation, TRL's eval logits, inputs we do not lay out) goes to the forward TRL installed."""
    if hasattr(model.forward, "dpo_layout"):
        set_layout(model, layout_name)
        return
    fused_forward = model.forward

    @functools.wraps(type(model).forward)  # generate() validates its kwargs against this signature
    def forward(self, *args, fused_lm_head=False, labels=None, **kwargs):
        given = {key for key, value in kwargs.items() if value is not None}  # PEFT passes inputs_embeds=None etc.
        if forward.dpo_layout == Batching.padded or not fused_lm_head or args or labels is None or given - LAYOUT_KWARGS:
            return fused_forward(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)
        return layout_forward(self, forward.dpo_layout, outputs, kwargs["input_ids"], kwargs["attention_mask"], labels)

    forward.dpo_layout = layout_name
    model.forward = types.MethodType(forward, model)


def set_layout(model, layout_name: str) -> None:
    model.forward.__func__.dpo_layout = layout_name


def install(trainer, requested: str, resolved: tuple[str, str | None] | None = None) -> str:
    """The layout for `dpo.batching=requested` on the trainer's loaded model, wrapped around the policy's fused head
    (under PEFT the base model's) and a separate reference model's; returns the layout in use. Called after TRL's
    add_fused_lm_head and before its reference pass. `auto` that cannot run prints one line and stays padded.
    `resolved`: what the start check resolved for this model (layouts.check); None: resolved here."""
    policy = trainer.model.get_base_model() if is_peft_model(trainer.model) else trainer.model
    layout, fallback = resolved or layouts.resolve(
        requested, layouts.layout_model_type(policy.config, trainer.args.max_length), seams.attn_implementation(policy.config))
    if fallback and trainer.accelerator.is_main_process:
        print(fallback, flush=True)
    if layout == Batching.padded:
        return layout
    wrap_forward(policy, layout, POLICY_OUTPUTS + (("log_sum_sq_probs",) if trainer.use_weighting else ()))
    if trainer.ref_model is not None:  # under DeepSpeed already an engine: the module inside it has the head
        wrap_forward(trainer.accelerator.unwrap_model(trainer.ref_model), layout, REFERENCE_OUTPUTS)
    return layout
