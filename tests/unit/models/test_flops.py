"""Tier 2: the FLOP counter (train/models/flops.py) on hand-checked cases, and against torch's own counter."""

import pytest
import torch

from helpers.flops import parameter_count
from train.models.flops import ModelSpec, dpo_step_flops, forward_flops, training_flops
from train.trainer.throughput import known_gpu_peak, sequence_lengths

# d=4, f=8, 1 layer, 2 heads of 2 (no GQA), vocabulary 10.
SMALL = ModelSpec(hidden_size=4, intermediate_size=8, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=2, vocab_size=10)


def test_forward_flops_by_hand():
    # Per token: q, k, v, o projections 4 x (2*4*4) = 128; attention over 3 positions:
    # Q K^T 2*3*4 = 24 and A V 2*3*4 = 24; gated MLP 3 * 2*4*8 = 192; LM head 2*4*10 = 80.
    # 128 + 48 + 192 + 80 = 448 per token, 3 tokens: 1344.
    assert forward_flops(SMALL, 3) == 1344


def test_grouped_query_attention_shrinks_only_k_and_v():
    gqa = ModelSpec(4, 8, 1, num_heads=2, num_kv_heads=1, head_dim=2, vocab_size=10)
    # k and v project to one head of 2: 2 * (2*4*2) = 32 instead of 64; everything else unchanged.
    assert forward_flops(gqa, 3) == 1344 - 3 * 32


def test_training_and_dpo_step_multiples():
    assert training_flops(SMALL, [3]) == 3 * 1344  # forward + backward (2x forward)
    # chosen and rejected of 3 tokens each: policy forward+backward = 3 x both forwards ...
    assert dpo_step_flops(SMALL, [3, 3], reference_forward=False) == 3 * 2 * 1344
    # ... plus one reference forward when the reference runs in the step.
    assert dpo_step_flops(SMALL, [3, 3], reference_forward=True) == 4 * 2 * 1344


def tiny_llama(attn_implementation="eager", **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=96, max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**{**spec, **overrides}, attn_implementation=attn_implementation))


def test_spec_from_config_and_parameter_count_match_a_real_llama():
    model = tiny_llama()
    spec = ModelSpec.from_config(model.config)
    assert (spec.num_kv_heads, spec.head_dim) == (2, 16)
    assert parameter_count(spec) == sum(p.numel() for p in model.parameters())


def test_forward_flops_equal_torch_flop_counter_on_a_real_forward():
    """torch's FlopCounterMode counts every matmul of a real forward (linear layers, attention, LM head).
    Eager attention: the counter has no formula for the CPU SDPA kernel and would count its attention as 0."""
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_llama().eval()
    seq = 11
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(input_ids=torch.randint(0, 96, (1, seq)))
    assert counter.get_total_flops() == forward_flops(ModelSpec.from_config(model.config), seq)


def test_sequence_lengths_from_mask_or_packed_positions():
    ids = torch.zeros(2, 5, dtype=torch.long)
    assert sequence_lengths(ids, torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])) == [3, 5]
    packed = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert sequence_lengths(torch.zeros(1, 9, dtype=torch.long), None, packed) == [3, 2, 4]
    assert sequence_lengths(ids, None) == [5, 5]


@pytest.mark.parametrize("name,dtype,peak", [
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989e12),
    ("NVIDIA H100 PCIe", torch.bfloat16, 756e12),
    ("NVIDIA H200", torch.bfloat16, 989e12),
    ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312e12),
    ("Some Future GPU", torch.bfloat16, None),
])
def test_known_gpu_peaks(name, dtype, peak):
    assert known_gpu_peak(name, dtype) == peak
