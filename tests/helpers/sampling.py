"""Both halves of the evaluation's sampling in one call, as the evaluate stage runs them on two sides."""

from __future__ import annotations

from train.models.sampling import sample_policy, sample_reference


def sample_prompts(policy, reference, tokenizer, texts: list[str], indices: list[int], max_new_tokens: int,
                   temperature: float, batch_size: int, seed: int, progress: bool = False) -> list[dict]:
    """Both halves with both models at hand. `texts` are rendered prompts and `indices` their places among all
    eval prompts (which seed their samples). Policy and reference draw with the same per-prompt seeds (common
    random numbers: a smaller variance of the win rate)."""
    batches = sample_policy(policy, tokenizer, texts, indices, max_new_tokens, temperature, batch_size, seed, progress)
    return sample_reference(reference, tokenizer, batches, max_new_tokens, temperature, progress)
