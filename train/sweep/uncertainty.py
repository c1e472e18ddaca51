"""How sure is a sweep's figure? 95% intervals for the two metrics a sweep is ranked by.

  judge reward        a mean over held-out prompts: a percentile bootstrap over the prompts (each run's
                      eval_samples.jsonl holds every prompt's policy_reward), seeded, so a report is the same
                      every time it is written.
  held-out accuracy   a share of held-out pairs: a Wilson score interval from the share and the number of pairs
                      (TRL reports only the mean, so no per-pair results exist to resample). Wilson, not the normal
                      approximation: at 12/12 the normal interval is [1, 1], Wilson's is [0.76, 1].
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from statistics import NormalDist
from typing import Optional, Sequence

CONFIDENCE = 0.95
RESAMPLES = 1000
SEED = 0


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    n: int  # prompts or pairs the figure is a mean over
    unit: str  # "prompts" or "pairs"
    method: str  # "bootstrap" or "Wilson"

    def text(self) -> str:
        return f"{CONFIDENCE:.0%} CI [{self.low:.4g}, {self.high:.4g}], n={self.n} {self.unit}"

    def overlaps(self, other: "Interval") -> bool:
        return self.low <= other.high and other.low <= self.high


def bootstrap_mean(values: Sequence[float], resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                   seed: int = SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`: `resamples` means of n draws with replacement,
    cut at (1 - confidence) / 2 at each end. Its own seeded generator: the same values give the same interval."""
    if not values:
        raise ValueError("a bootstrap needs at least one value")
    rng, n = random.Random(seed), len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    low = means[int(math.floor(tail * resamples))]
    high = means[int(math.ceil((1 - tail) * resamples)) - 1]
    return low, high


def wilson(share: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion `share` observed on n trials."""
    if n <= 0:
        raise ValueError("a Wilson interval needs n >= 1")
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def judge_interval(rewards: Optional[Sequence[float]]) -> Optional[Interval]:
    """The judge reward's interval from its per-prompt rewards; None without them."""
    if not rewards:
        return None
    low, high = bootstrap_mean(list(rewards))
    return Interval(low, high, len(rewards), "prompts", "bootstrap")


def accuracy_interval(share: float, pairs: Optional[int]) -> Optional[Interval]:
    """The held-out accuracy's interval from the number of held-out pairs; None when it is unknown."""
    if not pairs or not 0 <= share <= 1:
        return None
    low, high = wilson(share, pairs)
    return Interval(low, high, pairs, "pairs", "Wilson")
