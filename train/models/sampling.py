"""After DPO: sample held-out prompts from policy and reference, estimate the KL, judge the samples.

KL(policy || reference) is estimated as in the DPO paper's reward-KL frontier (fig. 2): the mean over
policy samples y ~ pi(.|x) of sum_t [log pi(y_t|x, y_<t) - log pi_ref(y_t|x, y_<t)].

Each prompt has its own random stream (seeded by `seed` and the prompt's index), so its samples do not
depend on the batch it shares or on how the prompts are spread over ranks: 1 and N processes sample the same
texts (train/pipeline/evaluate.py shards the prompts and gathers the records).
"""

from __future__ import annotations

import hashlib
import inspect
import math
from typing import Optional

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList


def win_rate(scores: list[float], other_scores: list[float]) -> float:
    """Share of items where `scores` beats `other_scores`; a tie counts half. Policy vs reference samples gives the
    win rate; a judge's chosen vs rejected scores of preference pairs gives its agreement with the labels."""
    wins = sum(1.0 if p > r else 0.5 if p == r else 0.0 for p, r in zip(scores, other_scores))
    return wins / len(scores)


def render_prompts(tokenizer, prompts: list, conversational: bool) -> list[str]:
    if conversational:
        return [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    return list(prompts)


def shard_bounds(count: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of this rank's contiguous share of `count` items; shares differ by at most one item and,
    taken in rank order, cover 0..count-1 exactly once."""
    return count * rank // world_size, count * (rank + 1) // world_size


def prompt_seed(seed: int, index: int) -> int:
    """32 bits (torch's CPU generator, mt19937, keeps only the low 32 bits of a seed), mixed from both."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:4], "little")


class PerPromptSampling(LogitsProcessor):
    """Sampling with one random stream per row, for generate(do_sample=False): argmax(logits / T + Gumbel noise)
    is an exact draw from softmax(logits / T) (the Gumbel-max trick), and row i's noise comes from its own
    generator. torch's sampling in generate() draws the whole batch from one stream, so a prompt's sample would
    change with its batch-mates. temperature=0 is greedy."""

    def __init__(self, seeds: list[int], temperature: float):
        self.seeds, self.temperature, self.generators = seeds, temperature, None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.temperature == 0:
            return scores
        if self.generators is None:
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        vocab, device = scores.shape[-1], scores.device
        uniform = torch.stack([torch.rand(vocab, generator=g, device=device) for g in self.generators])
        return scores.float() / self.temperature - torch.log(-torch.log(uniform))


@torch.no_grad()
def sample(model, tokenizer, texts: list[str], max_new_tokens: int, temperature: float, seeds: list[int]):
    """Returns (prompt+completion ids, attention mask, completion mask, decoded completions) for one batch, left-padded."""
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    out = model.generate(
        **batch,
        do_sample=False,  # the sampling is PerPromptSampling's
        logits_processor=LogitsProcessorList([PerPromptSampling(seeds, temperature)]),
        # Unset what a model's generation_config.json may set (Qwen: temperature, top_p, top_k, repetition
        # penalty): samples from the model's own distribution are what the KL estimate assumes.
        temperature=None, top_k=None, top_p=None, repetition_penalty=None,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    prompt_len = batch["input_ids"].shape[1]
    completion = out[:, prompt_len:]
    # Keep tokens up to and including the first EOS; the rest is padding from generate().
    is_eos = completion == tokenizer.eos_token_id
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    completion_mask = ~after_eos
    attention = torch.cat([batch["attention_mask"], completion_mask.long()], dim=1)
    texts_out = tokenizer.batch_decode(completion.masked_fill(after_eos, tokenizer.pad_token_id), skip_special_tokens=True)
    return out, attention, completion_mask, texts_out


@torch.no_grad()
def sequence_logps(model, ids: torch.Tensor, attention: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log-probs of the completion tokens, one value per row. The LM head runs only where a completion token
    is predicted (transformers' logits_to_keep): [rows, completion + 1, vocab] instead of [rows, prompt +
    completion, vocab] in fp32, which for an 8B model's 128k vocabulary, 32 prompts and 1k tokens was 17 GB."""
    position_ids = (attention.cumsum(dim=1) - 1).clamp(min=0)
    completion = completion_mask.shape[1]
    kwargs = {"logits_to_keep": completion + 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    logits = model(input_ids=ids, attention_mask=attention, position_ids=position_ids, **kwargs).logits
    logits = logits[:, -(completion + 1) : -1].float()  # the positions that predict the completion tokens
    logps = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, -completion:, None]).squeeze(-1)
    return (logps * completion_mask).sum(dim=1)


def sample_policy(policy, tokenizer, texts: list[str], indices: list[int], max_new_tokens: int, temperature: float,
                  batch_size: int, seed: int, progress: bool = False) -> list[dict]:
    """The first half of evaluation, with only the policy in memory: its samples (ids kept on the CPU for the
    reference to score) and their policy log-probs, one entry per batch of prompts."""
    batches = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="eval: policy", unit="batch", disable=not progress or not starts):
        chunk, chunk_indices = texts[start : start + batch_size], indices[start : start + batch_size]
        seeds = [prompt_seed(seed, i) for i in chunk_indices]
        ids, attn, mask, policy_texts = sample(policy, tokenizer, chunk, max_new_tokens, temperature, seeds)
        batches.append({"texts": chunk, "indices": chunk_indices, "seeds": seeds, "ids": ids.cpu(),
                        "attention": attn.cpu(), "mask": mask.cpu(), "policy": policy_texts,
                        "policy_logps": sequence_logps(policy, ids, attn, mask).cpu()})
    return batches


def sample_reference(reference, tokenizer, batches: list[dict], max_new_tokens: int, temperature: float,
                     progress: bool = False) -> list[dict]:
    """The second half, with only the reference in memory: it scores the policy's samples (the KL estimate) and
    draws its own with the same per-prompt seeds. One record per prompt: {index, prompt, policy, reference,
    log_ratio}."""
    records = []
    for batch in tqdm(batches, desc="eval: reference", unit="batch", disable=not progress or not batches):
        device = reference.device
        reference_logps = sequence_logps(reference, batch["ids"].to(device), batch["attention"].to(device),
                                         batch["mask"].to(device)).cpu()
        log_ratios = (batch["policy_logps"] - reference_logps).tolist()
        _, _, _, reference_texts = sample(reference, tokenizer, batch["texts"], max_new_tokens, temperature,
                                          batch["seeds"])
        for i, prompt, p, r, lr in zip(batch["indices"], batch["texts"], batch["policy"], reference_texts, log_ratios):
            records.append({"index": i, "prompt": prompt, "policy": p, "reference": r, "log_ratio": lr})
    return records


def judge_records(judge, records: list[dict], prompts: list) -> None:
    """Adds policy_reward and reference_reward to each record; `prompts` as the data gives them, by index."""
    raw = [prompts[r["index"]] for r in records]
    rewards = judge.score(raw + raw, [r["policy"] for r in records] + [r["reference"] for r in records])
    for record, p, r in zip(records, rewards[: len(records)], rewards[len(records) :]):
        record.update(policy_reward=p, reference_reward=r)


def eval_metrics(records: list[dict], agreement: Optional[float]) -> dict:
    """results.json's evaluation fields from all prompts' records (judged or not) and the judge's agreement with
    the held-out preference labels."""
    metrics = {"kl_to_reference": sum(r["log_ratio"] for r in records) / len(records), "num_prompts": len(records),
               "judge_reward": None, "reference_judge_reward": None, "win_rate_vs_reference": None,
               "judge_agreement": agreement}
    if records and "policy_reward" in records[0]:
        policy, reference = [r["policy_reward"] for r in records], [r["reference_reward"] for r in records]
        metrics.update(judge_reward=sum(policy) / len(records), reference_judge_reward=sum(reference) / len(records),
                       win_rate_vs_reference=win_rate(policy, reference))
    assert all(math.isfinite(v) for v in metrics.values() if v is not None)
    return metrics
