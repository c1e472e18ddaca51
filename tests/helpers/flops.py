"""Parameters implied by a FLOP spec: the check that a spec (train/models/flops.py) describes a real model."""

from __future__ import annotations

from train.models.flops import ModelSpec


def parameter_count(spec: ModelSpec, tied_embeddings: bool = False) -> int:
    """Parameters implied by the spec (RMSNorm weights included), to check a spec against a model."""
    d, q_width, kv_width = spec.hidden_size, spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    layer = d * q_width + 2 * d * kv_width + q_width * d + 3 * d * spec.intermediate_size + 2 * d
    embeddings = spec.vocab_size * d * (1 if tied_embeddings else 2)
    return spec.num_layers * layer + embeddings + d
