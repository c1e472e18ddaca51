"""After DPO: sample held-out prompts from policy and reference, judge the samples, estimate the KL.

KL(policy || reference) is estimated as in the DPO paper's reward-KL frontier (fig. 2): the mean over
policy samples y ~ pi(.|x) of sum_t [log pi(y_t|x, y_<t) - log pi_ref(y_t|x, y_<t)].
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch


def win_rate(policy_scores: list[float], reference_scores: list[float]) -> float:
    """Share of prompts where the policy's sample beats the reference's; a tie counts half."""
    wins = sum(1.0 if p > r else 0.5 if p == r else 0.0 for p, r in zip(policy_scores, reference_scores))
    return wins / len(policy_scores)


def render_prompts(tokenizer, prompts: list, conversational: bool) -> list[str]:
    if conversational:
        return [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    return list(prompts)


@torch.no_grad()
def sample(model, tokenizer, texts: list[str], max_new_tokens: int, temperature: float, seed: int):
    """Returns (prompt+completion ids, completion mask, decoded completions) for one batch, left-padded."""
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    torch.manual_seed(seed)
    out = model.generate(
        **batch,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
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
    """Sum of log-probs of the completion tokens, one value per row."""
    position_ids = (attention.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attention, position_ids=position_ids).logits.float()
    logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    prompt_len = ids.shape[1] - completion_mask.shape[1]
    return (logps[:, prompt_len - 1 :] * completion_mask).sum(dim=1)


def evaluate(
    policy,
    reference,
    tokenizer,
    prompts: list,
    conversational: bool,
    judge: Optional[Callable[[str], float]],
    max_new_tokens: int,
    temperature: float,
    batch_size: int,
    seed: int,
) -> tuple[dict, list[dict]]:
    texts = render_prompts(tokenizer, prompts, conversational)
    kls, samples = [], []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        ids, attn, mask, policy_texts = sample(policy, tokenizer, chunk, max_new_tokens, temperature, seed + start)
        kls += (sequence_logps(policy, ids, attn, mask) - sequence_logps(reference, ids, attn, mask)).tolist()
        _, _, _, reference_texts = sample(reference, tokenizer, chunk, max_new_tokens, temperature, seed + start)
        for prompt, p, r in zip(chunk, policy_texts, reference_texts):
            samples.append({"prompt": prompt, "policy": p, "reference": r})
    metrics = {"kl_to_reference": sum(kls) / len(kls), "num_prompts": len(texts)}
    if judge is not None:
        policy_scores = [judge(s["policy"]) for s in samples]
        reference_scores = [judge(s["reference"]) for s in samples]
        for s, p, r in zip(samples, policy_scores, reference_scores):
            s.update(policy_reward=p, reference_reward=r)
        metrics.update(
            judge_reward=sum(policy_scores) / len(samples),
            reference_judge_reward=sum(reference_scores) / len(samples),
            win_rate_vs_reference=win_rate(policy_scores, reference_scores),
        )
    assert all(math.isfinite(v) for v in metrics.values())
    return metrics, samples
