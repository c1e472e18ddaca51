"""A small labeled set for tests/test_annotate.py: four prompts (one as chat messages, one with two answers), and
what three annotators (a, b, c) say about them under each scheme. The same labels are posted to a real Label
Studio and written as a toy export, so the server tier and the pure tests expect the same pairs.

Rating (slots 1..3; None: not rated):
  p0  a 5 3 1   b 4 3 2            means 4.5 3 1.5  -> pair slot 1 > slot 3 (4.5 vs 1.5), 2 annotators
  p1  a 3 3 3   b skipped          a tie            -> no pair
  p2  a 4 -     b 2 5 (2 answers)  a partial: 3 5   -> pair slot 2 > slot 1 (5 vs 3), 2 annotators
  p3  a 4 2 3   b 2 4 3   c empty  disagreement     -> means 3 3 3, a tie, no pair
Agreement, by hand: the units two annotators rated are (5,4) (3,3) (1,2) (4,2) (4,2) (2,4) (3,3); 14 values,
mean 3, squared deviations 16. Interval: Do = 2*(1+0+1+4+4+4+0)/14 = 2, De = 2*14*16/(14*13) = 32/13,
alpha = 1 - 2*13/32 = 3/16. Ordinal (value counts 1:1 2:4 3:4 4:4 5:1; delta(c,k) = (n_c + .. + n_k -
(n_c + n_k)/2)^2): Do = (2*6.25 + 6*64 + 2*6.25)/14 = 409/14, De = 2*2975/182, alpha = 1 - 409*13/5950 = 633/5950.

Best/worst (votes: +1 best, -1 worst):
  p0  a 1/3  b 1/2  c 2/3          votes 2 0 -2      -> pair slot 1 > slot 3 (2 vs -2), 3 annotators
  p1  a 2/1  b skipped             votes -1 1 0      -> pair slot 2 > slot 1 (1 vs -1), 1 annotator
  p2  a 1/2  b 2/1                 votes 0 0: a tie  -> no pair
  p3  a best 3 only (partial), b 3/3 (invalid)       -> no annotation used, its 3 answers unrated
Agreement: annotator pairs p0 ab, ac, bc and p2 ab: same best 1 of 4, same worst 1 of 4.
"""

from __future__ import annotations

SKIP = "skip"
EMPTY = "empty"

PROMPTS = {"p0": "Name a fruit.", "p1": [{"role": "user", "content": "Say hello."}], "p2": "Two plus two?",
           "p3": "Describe the sea."}
ANSWERS = {"p0": ["An apple.", "A rock.", "Blue."], "p1": ["Bye.", "Hello!", "Hm."], "p2": ["Five.", "Four."],
           "p3": ["It is wet and wide.", "Salty.", "Big water."]}
MODELS = [("policy", 0), ("policy", 1), ("reference", 0)]

RATINGS = {"p0": {"a": [5, 3, 1], "b": [4, 3, 2]},
           "p1": {"a": [3, 3, 3], "b": SKIP},
           "p2": {"a": [4, None], "b": [2, 5]},
           "p3": {"a": [4, 2, 3], "b": [2, 4, 3], "c": EMPTY}}
BEST_WORST = {"p0": {"a": (1, 3), "b": (1, 2), "c": (2, 3)},
              "p1": {"a": (2, 1), "b": SKIP},
              "p2": {"a": (1, 2), "b": (2, 1)},
              "p3": {"a": (3, None), "b": (3, 3)}}

ALPHA_INTERVAL = 3 / 16
ALPHA_ORDINAL = 633 / 5950
# (prompt_id, chosen slot, rejected slot, score_chosen, score_rejected, annotators)
RATING_PAIRS = [("p0", 1, 3, 4.5, 1.5, 2), ("p2", 2, 1, 5.0, 3.0, 2)]
BEST_WORST_PAIRS = [("p0", 1, 3, 2.0, -2.0, 3), ("p1", 2, 1, 1.0, -1.0, 1)]


def answer_rows() -> list[dict]:
    """The answers file on-policy generation writes: one row per answer."""
    return [{"prompt_id": pid, "prompt": PROMPTS[pid], "model": MODELS[i][0], "sample": MODELS[i][1],
             "answer": text, "round": 1} for pid, texts in ANSWERS.items() for i, text in enumerate(texts)]


def result(scheme: str, said) -> dict:
    """An annotation body as Label Studio stores it: result items, or skipped (was_cancelled), or empty."""
    if said == SKIP:
        return {"result": [], "was_cancelled": True}
    if said == EMPTY:
        return {"result": [], "was_cancelled": False}
    if scheme == "rating":
        items = [{"from_name": f"rating_{i}", "to_name": f"answer_{i}", "type": "rating", "value": {"rating": v}}
                 for i, v in enumerate(said, 1) if v is not None]
    else:
        items = [{"from_name": name, "to_name": "prompt", "type": "choices", "value": {"choices": [str(slot)]}}
                 for name, slot in zip(("best", "worst"), said) if slot is not None]
    return {"result": items, "was_cancelled": False}


def labels(scheme: str) -> dict:
    return RATINGS if scheme == "rating" else BEST_WORST


def expected_pairs(scheme: str) -> list[dict]:
    """The pairs the labels make, as train/data/annotations.py writes them."""
    out = []
    pairs = RATING_PAIRS if scheme == "rating" else BEST_WORST_PAIRS
    # One chat prompt among them makes every pair chat messages (one table, one type per column).
    chat = any(isinstance(PROMPTS[pair[0]], list) for pair in pairs)
    for pid, hi, lo, s_hi, s_lo, annotators in pairs:
        text = {slot: ANSWERS[pid][slot - 1] for slot in (hi, lo)}
        prompt = PROMPTS[pid]
        if chat and not isinstance(prompt, list):
            prompt = [{"role": "user", "content": prompt}]
        out.append({"prompt": prompt,
                    "chosen": [{"role": "assistant", "content": text[hi]}] if chat else text[hi],
                    "rejected": [{"role": "assistant", "content": text[lo]}] if chat else text[lo],
                    "score_chosen": s_hi, "score_rejected": s_lo,
                    "chosen_model": MODELS[hi - 1][0], "chosen_sample": MODELS[hi - 1][1],
                    "rejected_model": MODELS[lo - 1][0], "rejected_sample": MODELS[lo - 1][1],
                    "prompt_id": pid, "annotators": annotators})
    return out
