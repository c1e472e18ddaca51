"""The embedded default task: a miniature of the DPO paper's controlled-sentiment generation (sec. 6.1).

Prompts ask for a review; responses are review-like word sequences of mixed sentiment. The judge is a
lexicon score (a pure function) that plays the role of the paper's sentiment classifier: it is the
ground-truth reward that DPO never sees directly, only through the preference pairs built from it.
Everything is generated from a seed, so the task needs no network and is identical on every rank.
"""

from __future__ import annotations

import random
import re

POSITIVE = (
    "great wonderful excellent amazing superb brilliant delightful lovely charming moving "
    "beautiful enjoyable fantastic perfect touching clever fresh gripping stunning warm"
).split()
NEGATIVE = (
    "terrible awful boring dull bad poor weak clumsy tedious bland "
    "messy annoying painful lifeless flat forgettable ugly confusing slow stale"
).split()
NEUTRAL = (
    "the a this film movie story plot acting cast music ending scene scenes script director "
    "camera pace it was is and but with very quite rather really so its of in on"
).split()
SUBJECTS = (
    "western comedy thriller drama musical documentary romance mystery cartoon sequel "
    "remake biopic horror heist satire fantasy"
).split()
TOPICS = (
    "set in paris", "about a dog", "about two sisters", "set at sea", "about a chef", "set in space",
    "about a detective", "about a small town", "set in winter", "about a robot", "about a band",
)

_POSITIVE_SET, _NEGATIVE_SET = frozenset(POSITIVE), frozenset(NEGATIVE)
_WORD = re.compile(r"[a-z]+")


def judge(text: str) -> float:
    """Sentiment reward of a response: (# positive words) - (# negative words), case-insensitive."""
    words = _WORD.findall(text.lower())
    return float(sum(w in _POSITIVE_SET for w in words) - sum(w in _NEGATIVE_SET for w in words))


def make_prompt(rng: random.Random) -> str:
    return f"write a review of the {rng.choice(SUBJECTS)} {rng.choice(TOPICS)}"


def make_response(rng: random.Random, min_words: int = 10, max_words: int = 16) -> str:
    """A review whose sentiment leaning is drawn uniformly, so the mean judge score is ~0 (neutral)."""
    positive_share = rng.random()
    words = []
    for _ in range(rng.randint(min_words, max_words)):
        if rng.random() < 0.6:
            words.append(rng.choice(NEUTRAL))
        elif rng.random() < positive_share:
            words.append(rng.choice(POSITIVE))
        else:
            words.append(rng.choice(NEGATIVE))
    return " ".join(words)


def make_sft_rows(n: int, seed: int) -> list[dict]:
    """Prompt-completion rows for SFT: neutral on average, so SFT teaches the format, not the preference."""
    rng = random.Random(f"sft-{seed}")
    return [{"prompt": make_prompt(rng), "completion": make_response(rng)} for _ in range(n)]


def build_pairs(prompt: str, responses: list[str], scores: list[float]) -> list[dict]:
    """Preference pairs from judged responses to one prompt: higher score is chosen; ties never become pairs."""
    pairs = []
    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            if scores[i] == scores[j]:
                continue
            hi, lo = (i, j) if scores[i] > scores[j] else (j, i)
            pairs.append({"prompt": prompt, "chosen": responses[hi], "rejected": responses[lo]})
    return pairs


def make_preference_rows(n: int, seed: int, split: str) -> list[dict]:
    """`n` pairs, each from two responses to a fresh prompt; tied pairs are dropped (and replaced)."""
    rng = random.Random(f"pairs-{split}-{seed}")
    rows: list[dict] = []
    while len(rows) < n:
        prompt = make_prompt(rng)
        responses = [make_response(rng), make_response(rng)]
        rows += build_pairs(prompt, responses, [judge(r) for r in responses])
    return rows


def make_eval_prompts(n: int, seed: int) -> list[dict]:
    rng = random.Random(f"eval-{seed}")
    return [{"prompt": make_prompt(rng)} for _ in range(n)]


def corpus(seed: int = 0, n: int = 2000) -> list[str]:
    """Text to fit the tiny model's tokenizer on: every word of the task appears many times."""
    rng = random.Random(f"corpus-{seed}")
    words = " ".join(POSITIVE + NEGATIVE + NEUTRAL + SUBJECTS + list(TOPICS) + ["write a review of the"])
    return [words] + [make_prompt(rng) + " " + make_response(rng) for _ in range(n)]
