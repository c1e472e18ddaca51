"""Ranking to pairs: several scored responses to one prompt -> preference pairs.

Strategies (data.ranking.strategy):
  best_vs_worst  one pair: the highest-scored response against the lowest (default; one pair per
                 prompt keeps prompts with many answers from dominating the data)
  best_vs_rest   the best against every lower-scored response
  all_pairs      every two responses with different scores
  adjacent       each response against the next one in score order (neighbours with equal scores skip)
A pair needs a score difference > 0 and >= min_margin: ties never become pairs. Among equal scores the
earlier response (input order) counts as the better-ranked one, so the result is deterministic.
"""

from __future__ import annotations
from train.config.choices import RankingStrategy

STRATEGIES = tuple(RankingStrategy)  # data.ranking.strategy=


def rank_to_pairs(prompt, responses: list[str], scores: list[float], strategy: str = "best_vs_worst",
                  min_margin: float = 0.0) -> list[dict]:
    """Pairs {prompt, chosen, rejected}, the chosen response scored higher than the rejected one."""
    if strategy not in STRATEGIES:
        raise ValueError(f"ranking strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if len(responses) != len(scores):
        raise ValueError(f"{len(responses)} responses but {len(scores)} scores")
    return [
        {"prompt": prompt, "chosen": responses[hi], "rejected": responses[lo]}
        for hi, lo in candidate_pairs(scores, strategy)
        if prefers(scores[hi] - scores[lo], min_margin)
    ]


def candidate_pairs(scores: list[float], strategy: str) -> list[tuple[int, int]]:
    """(better, worse) response indices the strategy considers, before ties and min_margin are left out."""
    if strategy not in STRATEGIES:
        raise ValueError(f"ranking strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if strategy == RankingStrategy.best_vs_worst:
        return [(order[0], order[-1])] if order else []
    if strategy == RankingStrategy.best_vs_rest:
        return [(order[0], j) for j in order[1:]]
    if strategy == RankingStrategy.all_pairs:
        return [(order[a], order[b]) for a in range(len(order)) for b in range(a + 1, len(order))]
    return list(zip(order, order[1:]))


def prefers(difference: float, min_margin: float) -> bool:
    """A score difference that makes a pair: above zero (ties never pair) and at least min_margin."""
    return difference > 0 and difference >= min_margin
