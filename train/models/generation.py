"""On-policy answers: N samples per prompt from the model being tuned, the raw material of preference pairs.

transformers' generate(num_return_sequences=N) copies each prompt N times before the first forward, so the
prompt's prefill runs N times. Here each prompt's prefill runs once: its KV cache and last logits are
repeated N times along the batch dimension, and the B*N rows are decoded token by token. Rows that reach EOS
leave the batch (their cache rows are dropped), so a batch costs what its live rows cost.

Each (prompt, sample) row draws from its own random stream (PerPromptSampling, the Gumbel-max trick that
evaluation uses, train/models/sampling.py), so an answer depends only on its prompt, its seed and the model:
not on its batch-mates, the batch size, the length sorting or the number of processes. Left padding is made
invisible with the attention mask and position ids counted from each row's first real token.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch
from transformers import DynamicCache, TopPLogitsWarper

from train.models.sampling import PerPromptSampling, prompt_seed

# Seeds of the answers: a flat list, prompt-major (prompt i's sample j at i * num_samples + j), or a function
# (prompt index, sample index) -> seed.
Seeds = Union[Sequence[int], Callable[[int, int], int]]


@dataclass
class Answers:
    """Per prompt (in the order given), per sample: the answer's text, its generated token ids (EOS included when
    it was reached) and whether it ended at EOS (False: cut at max_new_tokens)."""

    texts: list[list[str]]
    token_ids: list[list[list[int]]]
    stopped: list[list[bool]]

    @property
    def num_tokens(self) -> list[list[int]]:
        return [[len(ids) for ids in per_prompt] for per_prompt in self.token_ids]


def answer_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The seed of sample `sample_index` of the prompt at `prompt_index` among all prompts (not among a rank's
    share), so every process that holds the prompt draws the same answers."""
    return prompt_seed(prompt_seed(seed, prompt_index), sample_index)


def eos_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS and every EOS the model's generation_config names (Qwen and Llama 3 chat models end a
    turn with a token other than the tokenizer's EOS)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return sorted(i for i in ids if i is not None)


def seed_list(seeds: Seeds, num_prompts: int, num_samples: int) -> list[int]:
    if callable(seeds):
        return [seeds(i, j) for i in range(num_prompts) for j in range(num_samples)]
    if len(seeds) != num_prompts * num_samples:
        raise ValueError(f"{len(seeds)} seeds for {num_prompts} prompts x {num_samples} samples: need one per answer")
    return list(seeds)


@torch.no_grad()
def sample_answers(model, tokenizer, prompts: list[str], num_samples: int, seeds: Seeds, max_new_tokens: int,
                   temperature: float, top_p: float = 1.0, batch_size: int = 8, min_new_tokens: int = 0) -> Answers:
    """`num_samples` answers to each of `prompts` (rendered text, chat template applied). `batch_size` prompts
    share a prefill batch (batch_size * num_samples rows decode together); prompts are batched by token length,
    longest first, and the answers come back in the prompts' order. temperature 0 is greedy (every sample the
    same). `min_new_tokens` holds EOS back that many steps (the benchmark's fixed-length runs)."""
    if num_samples < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"num_samples ({num_samples}), batch_size ({batch_size}) and max_new_tokens "
                         f"({max_new_tokens}) must be at least 1")
    all_seeds = seed_list(seeds, len(prompts), num_samples)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(ids[i]))  # little padding; the longest (OOM) first
    eos = eos_token_ids(model, tokenizer)
    pad = next(i for i in (tokenizer.pad_token_id, *eos, 0) if i is not None)  # masked out: any id will do
    rows: list = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        chunk_seeds = [all_seeds[i * num_samples + j] for i in chunk for j in range(num_samples)]
        out = decode_batch(model, [ids[i] for i in chunk], num_samples, chunk_seeds, max_new_tokens, min_new_tokens,
                           temperature, top_p, eos, pad)
        for k, i in enumerate(chunk):
            rows[i] = out[k * num_samples : (k + 1) * num_samples]
    token_ids = [[r[0] for r in per_prompt] for per_prompt in rows]
    return Answers(texts=[tokenizer.batch_decode([t[:-1] if s else t for t, s in per_prompt], skip_special_tokens=True)
                          for per_prompt in rows],
                   token_ids=token_ids, stopped=[[r[1] for r in per_prompt] for per_prompt in rows])


def cache_argument(model) -> str:
    """The forward's KV-cache keyword: `cache` from transformers 5.25 on (which warns on the old name), else
    `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def decode_batch(model, prompt_ids: list[list[int]], num_samples: int, seeds: list[int], max_new_tokens: int,
                 min_new_tokens: int, temperature: float, top_p: float, eos: list[int],
                 pad: int) -> list[tuple[list[int], bool]]:
    """(generated ids, ended at EOS) per row, prompt-major: row k * num_samples + j is prompt k's sample j."""
    device = model.device
    width = max(len(p) for p in prompt_ids)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # a row's first real token is position 0, as unpadded
    cache, cache_kw = DynamicCache(config=model.config), cache_argument(model)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                   logits_to_keep=1, **{cache_kw: cache}).logits[:, -1]
    # The shared prefill: every sample of a prompt starts from the same cache and logits.
    cache.batch_repeat_interleave(num_samples)
    logits, mask = logits.repeat_interleave(num_samples, dim=0), mask.repeat_interleave(num_samples, dim=0)
    next_position = positions[:, -1].repeat_interleave(num_samples) + 1
    # Temperature, then nucleus, then the Gumbel draw: the order of generate()'s warpers.
    nucleus = TopPLogitsWarper(top_p) if temperature > 0 and top_p < 1.0 else None
    sampler = PerPromptSampling(seeds, 1.0 if temperature > 0 else 0)
    eos_ids = torch.tensor(eos, device=device)
    total = len(seeds)
    live = torch.arange(total, device=device)  # output row of each row still decoding
    out = torch.full((total, max_new_tokens), pad, device=device)
    lengths = torch.full((total,), max_new_tokens, device=device)
    stopped = torch.zeros(total, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        scores = logits.float()
        if step < min_new_tokens:
            scores[:, eos_ids] = -float("inf")
        if temperature > 0:
            scores = scores / temperature
            if nucleus is not None:
                scores = nucleus(None, scores)
        token = sampler(None, scores).argmax(dim=-1)
        out[live, step] = token
        ended = torch.isin(token, eos_ids)
        any_ended = bool(ended.any())
        if any_ended:
            lengths[live[ended]], stopped[live[ended]] = step + 1, True
        if step + 1 == max_new_tokens:
            break
        if any_ended:
            keep = (~ended).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            # A finished row leaves the batch: its cache, mask, position and random stream with it.
            cache.batch_select_indices(keep)
            live, token, mask, next_position = live[keep], token[keep], mask[keep], next_position[keep]
            if sampler.generators is not None:  # None when greedy
                sampler.generators = [sampler.generators[k] for k in keep.tolist()]
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_position[:, None],
                       use_cache=True, **{cache_kw: cache}).logits[:, -1]
        next_position = next_position + 1
    return [(row[:n], bool(s)) for row, n, s in zip(out.tolist(), lengths.tolist(), stopped.tolist())]
