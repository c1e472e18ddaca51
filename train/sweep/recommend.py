"""Which beta? A sweep's reward-KL Pareto front, the beta it recommends, and a search trial's objective.

Pure functions over the report's rows ({"run", "status", "results": results.json}); tests/test_recommend.py
runs them on toy rows. A sweep is ranked by the judge's mean reward of policy samples when its runs have
one, else by the held-out implicit-reward accuracy every finished DPO run has: both compare across betas,
while rewards/margins do not (reward = beta x log-ratio, so margins grow with beta by construction).
Each score carries its 95% interval (train/sweep/uncertainty.py); runs the intervals cannot separate from the
best are reported as tied, and the tied run closest to the reference is recommended (TIE_RULE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from train.config.choices import BetaSchedule
from train.core.errors import ConfigError
from train.sweep.uncertainty import (CONFIDENCE, RESAMPLES, SEED, Interval, accuracy_interval,
                                        judge_interval)

JUDGE_REWARD = "dpo.judge_reward"
HELD_OUT_ACCURACY = "dpo.held_out.rewards/accuracies"
HELD_OUT_PAIRS = "dpo.held_out.num_pairs"
WIN_RATE = "dpo.win_rate_vs_reference"
KL = "dpo.kl_to_reference"
LABELS = {
    JUDGE_REWARD: "judge reward",
    HELD_OUT_ACCURACY: "held-out implicit-reward accuracy",
    WIN_RATE: "win rate vs reference",
}
# search.metric: what a search trial returns; every one is "higher is better" (beta_search maximizes).
OBJECTIVES = {
    "auto": "judge reward when the run has one, else held-out implicit-reward accuracy (the report's ranking)",
    **LABELS,
}


def check(metric: str, kl_budget: Optional[float]) -> None:
    """search.metric and report.kl_budget, before anything runs."""
    if metric not in OBJECTIVES:
        choices = ", ".join(OBJECTIVES)
        raise ConfigError(f"search.metric={metric}: not a metric a search can maximize; use one of {choices}")
    if kl_budget is not None and not kl_budget >= 0:
        raise ConfigError(f"report.kl_budget={kl_budget}: a KL budget is >= 0 nats per sample (null: no budget)")


def value_at(results: dict, path: str) -> Optional[float]:
    """A number at a dotted results.json path (keys may hold '/': dpo.held_out.rewards/accuracies), else None."""
    node: Any = results
    for key in path.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    ok = isinstance(node, (int, float)) and not isinstance(node, bool) and math.isfinite(node)
    return float(node) if ok else None


def beta_rule(results: dict) -> str:
    """beta.schedule of a run (constant, linear, cosine, adaptive); constant where results.json does not say."""
    schedule = results.get("beta_schedule")
    rule = schedule.get("schedule") if isinstance(schedule, dict) else None
    return rule if isinstance(rule, str) else "constant"


def ranking_metric(rows: list[dict]) -> str:
    """The judge reward if any finished run was judged, else held-out accuracy (data without a judge)."""
    judged = any(value_at(r["results"], JUDGE_REWARD) is not None for r in rows if r["status"] == "ok")
    return JUDGE_REWARD if judged else HELD_OUT_ACCURACY


def objective(results: dict, metric: str) -> float:
    """What a search trial returns to the sweeper. A run without the metric raises: Hydra records the job as
    failed and Optuna counts a failed trial (within max_failure_rate). NaN would not do: optuna 2.10's tell()
    raises on it a second time inside the sweeper's own error handling, which ends the whole search."""
    if metric == "auto":
        metric = JUDGE_REWARD if value_at(results, JUDGE_REWARD) is not None else HELD_OUT_ACCURACY
    value = value_at(results, metric)
    if value is None:
        raise ConfigError(f"search.metric={metric}: this run has no such value in results.json (is the stage that "
                          "writes it on? a judge reward needs a judge and eval.enabled=true)")
    return value


@dataclass(frozen=True)
class Point:
    run: str
    beta: Optional[float]
    score: float  # the ranking metric
    kl: Optional[float]  # KL(policy || reference), nats per sample; None without the evaluation stage
    schedule: str = "constant"  # beta.schedule: for a schedule or adaptive beta, `beta` is its value at step 0
    interval: Optional[Interval] = None  # the score's 95% interval; None where the run kept no per-item data

    @property
    def bounds(self) -> Interval:
        """The interval, or the bare score (a zero-width interval) where there is none."""
        return self.interval or Interval(self.score, self.score, 0, "", "none")

    @property
    def beta_text(self) -> str:
        """beta=0.1, or beta=adaptive (0.1 at step 0) where beta moves during training."""
        value = "?" if self.beta is None else f"{self.beta:g}"
        return f"beta={value}" if self.schedule == BetaSchedule.constant else f"beta={self.schedule} ({value} at step 0)"


def scored(rows: list[dict], metric: str) -> tuple[list[Point], list[tuple[str, str]]]:
    """Runs with the metric, and (run, why) for every run without it: listed in the report, never dropped."""
    points, missing = [], []
    for row in rows:
        value = value_at(row["results"], metric)
        if row["status"] != "ok":
            missing.append((row["run"], f"failed ({row.get('error') or 'no finished results.json'})"))
        elif value is None:
            missing.append((row["run"], f"no {LABELS[metric]} in results.json"))
        else:
            points.append(Point(row["run"], value_at(row["results"], "beta"), value, value_at(row["results"], KL),
                                beta_rule(row["results"]), interval_of(row, metric, value)))
    return points, missing


def interval_of(row: dict, metric: str, value: float) -> Optional[Interval]:
    """The judge reward: a bootstrap over the row's per-prompt rewards (row["judge_rewards"], from the run's
    eval_samples.jsonl; ignored unless there is one per judged prompt). The held-out accuracy: a Wilson interval
    over dpo.held_out.num_pairs."""
    if metric == JUDGE_REWARD:
        rewards = row.get("judge_rewards") or []
        prompts = value_at(row["results"], "dpo.num_prompts")
        return judge_interval(rewards) if rewards and prompts in (None, len(rewards)) else None
    if metric == HELD_OUT_ACCURACY:
        pairs = value_at(row["results"], HELD_OUT_PAIRS)
        return accuracy_interval(value, int(pairs)) if pairs else None
    return None


def pareto_front(points: list[Point]) -> list[Point]:
    """Points with a KL that no other point beats on both axes (reward at least as high, KL at most as high,
    one strictly), by increasing KL: the DPO paper's reward-KL frontier (fig. 2)."""
    placed = [p for p in points if p.kl is not None]
    front = [p for p in placed if not any(
        q.score >= p.score and q.kl <= p.kl and (q.score > p.score or q.kl < p.kl) for q in placed)]
    return sorted(front, key=lambda p: (p.kl, -p.score))


TIE_RULE = (f"Each run's {LABELS[JUDGE_REWARD]} has a {CONFIDENCE:.0%} percentile-bootstrap interval over its "
            f"prompts ({RESAMPLES} resamples, seed {SEED}) and its {LABELS[HELD_OUT_ACCURACY]} a {CONFIDENCE:.0%} Wilson interval "
            "over its held-out pairs. Runs whose interval overlaps the best-scoring run's are tied with it (not "
            "separable by this many prompts or pairs); among tied runs the one with the smallest KL to the reference "
            "is recommended (then the larger beta, then the higher score). A run without an interval counts as its "
            "bare score.")


@dataclass(frozen=True)
class Recommendation:
    metric: str
    kl_budget: Optional[float]
    point: Optional[Point]
    reason: str  # why this run, or why none
    tied: tuple[Point, ...] = ()  # every run tied with the best-scoring one, the recommended one included

    def line(self) -> str:
        if self.point is None:
            return f"recommended: none ({self.reason})"
        p = self.point
        interval = "" if p.interval is None else f", {p.interval.text()}"
        kl = "" if p.kl is None else f", KL {p.kl:.4g}"
        return f"recommended: {p.beta_text} ({p.run}: {LABELS[self.metric]} {p.score:.4g}{interval}{kl}; {self.reason})"


def tie_key(p: Point) -> tuple:
    """Among tied runs: the smallest KL (none known: last), then the larger beta (the stronger KL penalty)."""
    return math.inf if p.kl is None else p.kl, -(p.beta or 0.0), -p.score


def recommend(rows: list[dict], kl_budget: Optional[float] = None) -> Recommendation:
    """Among runs whose KL is within the budget (no budget: all), the best-scoring run and every run whose
    interval overlaps its interval are tied; the tied run with the smallest KL is recommended (TIE_RULE)."""
    metric = ranking_metric(rows)
    points, _ = scored(rows, metric)
    label = LABELS[metric]
    if kl_budget is not None:
        points = [p for p in points if p.kl is not None and p.kl <= kl_budget]
    if not points:
        why = "no finished run has a " + label if kl_budget is None else f"no run has a {label} and KL <= {kl_budget:g}"
        return Recommendation(metric, kl_budget, None, why)
    best = min(points, key=lambda p: (-p.score,) + tie_key(p))
    tied = tuple(p for p in points if p is best or p.bounds.overlaps(best.bounds))
    pick = min(tied, key=tie_key)
    where = "among all runs" if kl_budget is None else f"within the KL budget {kl_budget:g}"
    if len(tied) == 1:
        sure = ("no other run's interval overlaps it" if best.interval is not None
                else "no interval: no per-item results saved for it")
        return Recommendation(metric, kl_budget, best, f"highest {label} {where}; {sure}", tied)
    others = ", ".join(p.beta_text for p in tied if p is not pick)
    by = "the smallest KL" if pick.kl is not None else "no KL estimates: the largest beta"
    leader = "it has the highest score" if pick is best else f"highest: {best.beta_text}, {best.score:.4g}"
    within = "" if kl_budget is None else f" (runs within the KL budget {kl_budget:g})"
    reason = (f"tied within noise with {others}{within}: their {CONFIDENCE:.0%} intervals overlap the best's "
              f"({leader}); {by} among them")
    return Recommendation(metric, kl_budget, pick, reason, tied)
