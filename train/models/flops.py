"""Model FLOPs of a decoder-only transformer (Llama/Qwen/Mistral layout), counted by hand.

Matrix multiplications only, 2 FLOPs per multiply-add; norms, activations, softmax and the optimizer
are left out (each is O(tokens x width), far below the matmuls). Per token and per layer:

    attention projections  2 * d * (h * dh)            q
                           2 * 2 * d * (h_kv * dh)     k, v
                           2 * (h * dh) * d            o
    attention itself       2 * seq * (h * dh)          scores Q K^T (the token against every position)
                           2 * seq * (h * dh)          weighted sum A V
    gated MLP              3 * 2 * d * f               gate, up, down

plus the LM head, 2 * d * V per token (the embedding lookup is free). Attention is counted over the
whole sequence, as PaLM's MFU appendix does (Chowdhery et al., 2022, app. B), not halved for the
causal mask. Training is forward + backward = 3 x forward (the backward computes gradients of both the
inputs and the weights: two matmuls for each forward one). Recomputation under gradient checkpointing is
NOT counted: MFU counts the model's FLOPs, not the hardware's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

BACKWARD_FACTOR = 2  # backward FLOPs per forward FLOP


@dataclass(frozen=True)
class ModelSpec:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int

    @classmethod
    def from_config(cls, config) -> "ModelSpec":
        """From a transformers config (LlamaConfig, Qwen2Config, ...)."""
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = config.num_attention_heads
        return cls(
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            vocab_size=config.vocab_size,
        )


def forward_flops(spec: ModelSpec, seq_len: int) -> int:
    """FLOPs of one forward pass over one sequence of `seq_len` tokens (every position's logits)."""
    d, q_width, kv_width = spec.hidden_size, spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    projections = 2 * d * q_width + 2 * 2 * d * kv_width + 2 * q_width * d
    attention = 2 * seq_len * q_width + 2 * seq_len * q_width
    mlp = 3 * 2 * d * spec.intermediate_size
    per_token = spec.num_layers * (projections + attention + mlp) + 2 * d * spec.vocab_size
    return seq_len * per_token


def training_flops(spec: ModelSpec, seq_lens: Iterable[int]) -> int:
    """Forward + backward over a batch of sequences (their unpadded lengths): an SFT step."""
    return (1 + BACKWARD_FACTOR) * sum(forward_flops(spec, n) for n in seq_lens)


def dpo_step_flops(spec: ModelSpec, seq_lens: Iterable[int], reference_forward: bool) -> int:
    """A DPO step over chosen and rejected sequences (`seq_lens` holds both, unpadded): the policy's
    forward and backward, plus the reference model's forward when it runs in the step (not when its
    log-probs were precomputed)."""
    lens = list(seq_lens)
    forward = sum(forward_flops(spec, n) for n in lens)
    return (1 + BACKWARD_FACTOR + (1 if reference_forward else 0)) * forward
