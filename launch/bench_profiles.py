"""Length profiles for `make bench ARGS="--only profiles"`: synthetic preference pairs whose prompt,
chosen and rejected token lengths follow what users train on, so the DPO step is measured at real lengths, not
at the embedded task's short uniform ones (11.5% padding).

Where the numbers come from. One source gives all three datasets in the same units: the prefix-sharing paper's
repository (Wang & Hegde 2024, arXiv 2410.20305; github.com/frankxwang/dpo-prefix-sharing, README "Speedups",
Llama-3 tokenizer with its chat template) lists per dataset the median overall length and the median
prefix-to-completion length ratio:

    dataset                                       median overall   median prefix / completion
    TL;DR (trl-internal-testing/tldr-preference)  416              11.14
    UltraFeedback (ultrafeedback_binarized)       409              0.42
    HH-RLHF (hh-rlhf-trl-style, multi-turn)       186              2.15

We read "overall" as prompt + one completion, so completion = overall / (1 + ratio) and prompt = overall -
completion: TL;DR 382 / 34, UltraFeedback 121 / 288, HH-RLHF 127 / 59 tokens (the medians of the parts taken as
the parts of the medians: an approximation). These agree with what the datasets are: a Reddit post with a short
TL;DR; a one-turn instruction with a long model answer; a dialogue of a few turns with a short reply. No source
in reach gives the spread, so each length is lognormal around its median with an assumed sigma (below, per
profile). Chosen and rejected are drawn independently from the response distribution. Lengths are not cut here:
TRL's collator truncates prompt + response to max_length (keep_start) for every side alike, and the prompt is
capped so that no row is dropped (TRL drops rows whose prompt alone fills max_length).

Text is made of words that the tokenizer encodes as one token each, so a drawn length is the token count
TRL sees (plus the chat template's role and end tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from datasets import Dataset

MAX_LENGTH = 1024  # TRL's DPOConfig.max_length default, the setting


@dataclass(frozen=True)
class LengthProfile:
    """Token lengths of one dataset: lognormal around the published medians (module docstring)."""
    median_overall: float  # published: median prompt + completion tokens
    prefix_to_completion: float  # published: median prompt / completion length ratio
    prompt_sigma: float  # assumed spread (log scale) of the prompt length
    response_sigma: float  # assumed spread of each response's length
    max_turns: int = 1  # prompt messages: a dialogue of up to this many user turns (HH-RLHF)

    @property
    def response_median(self) -> float:
        return self.median_overall / (1 + self.prefix_to_completion)

    @property
    def prompt_median(self) -> float:
        return self.median_overall - self.response_median


PROFILES = {
    # Sigmas are assumptions (no published spread found): posts and TL;DRs of fairly even length,
    "tldr": LengthProfile(median_overall=416, prefix_to_completion=11.14, prompt_sigma=0.35, response_sigma=0.35),
    # Instructions range from one line to pasted documents (wide); answers of several paragraphs.
    "ultrafeedback": LengthProfile(median_overall=409, prefix_to_completion=0.42, prompt_sigma=0.9, response_sigma=0.6),
    # One to four user turns with the assistant's replies in between; replies of a sentence or a paragraph.
    "hh": LengthProfile(median_overall=186, prefix_to_completion=2.15, prompt_sigma=0.7, response_sigma=0.7, max_turns=4),
}


def draw_lengths(profile: LengthProfile, n: int, seed: int, max_length: int = MAX_LENGTH) -> dict[str, np.ndarray]:
    """Token lengths of `n` pairs: prompt (all turns), chosen, rejected, each >= 1. The prompt is capped at
    max_length - 1 so that TRL keeps every row (it drops a row whose prompt alone reaches max_length)."""
    rng = np.random.default_rng(seed)

    def lognormal(median: float, sigma: float) -> np.ndarray:
        return np.maximum(1, np.rint(rng.lognormal(math.log(median), sigma, n))).astype(int)

    prompt = np.minimum(lognormal(profile.prompt_median, profile.prompt_sigma), max_length - 1)
    return {"prompt": prompt, "chosen": lognormal(profile.response_median, profile.response_sigma),
            "rejected": lognormal(profile.response_median, profile.response_sigma),
            "turns": rng.integers(1, profile.max_turns + 1, n)}


def single_token_words(tokenizer) -> list[str]:
    """Words that `tokenizer` encodes, after a space, as exactly one token: text of a known token length."""
    words = []
    for token in tokenizer.get_vocab():
        word = tokenizer.convert_tokens_to_string([token]).strip()
        if word.isalpha() and word.isascii() and len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1:
            words.append(word)
    if len(words) < 20:
        raise ValueError(f"tokenizer has only {len(words)} single-token words: too few for varied synthetic text")
    return sorted(set(words))


def text_of(words: list[str], n_tokens: int, rng: np.random.Generator) -> str:
    return "".join(" " + words[i] for i in rng.integers(0, len(words), n_tokens))


def split_turns(n_tokens: int, turns: int) -> list[int]:
    """Token counts of a dialogue's 2*turns-1 messages (user, assistant, ..., user) that sum to n_tokens."""
    messages = min(2 * turns - 1, n_tokens)
    base, extra = divmod(n_tokens, messages)
    return [base + (i < extra) for i in range(messages)]


def make_pairs(profile: LengthProfile, n: int, words: list[str], seed: int, max_length: int = MAX_LENGTH) -> Dataset:
    """`n` conversational pairs ({prompt, chosen, rejected} as message lists, the format TRL and the project
    train on) whose content token counts are draw_lengths(profile, n, seed)."""
    lengths = draw_lengths(profile, n, seed, max_length)
    rng = np.random.default_rng(seed + 1)
    rows = []
    for i in range(n):
        prompt = [{"role": "user" if k % 2 == 0 else "assistant", "content": text_of(words, size, rng)}
                  for k, size in enumerate(split_turns(int(lengths["prompt"][i]), int(lengths["turns"][i])))]
        rows.append({"prompt": prompt,
                     "chosen": [{"role": "assistant", "content": text_of(words, int(lengths["chosen"][i]), rng)}],
                     "rejected": [{"role": "assistant", "content": text_of(words, int(lengths["rejected"][i]), rng)}]})
    return Dataset.from_list(rows)


def length_summary(lengths: dict[str, np.ndarray], max_length: int = MAX_LENGTH) -> dict[str, float]:
    """Medians of the drawn lengths and the share of sequences TRL's keep_start truncation cuts."""
    chosen = lengths["prompt"] + lengths["chosen"]
    rejected = lengths["prompt"] + lengths["rejected"]
    return {"prompt_median": float(np.median(lengths["prompt"])),
            "response_median": float(np.median(np.concatenate([lengths["chosen"], lengths["rejected"]]))),
            "truncated_share": float(np.mean(np.concatenate([chosen, rejected]) > max_length))}
