"""Which beta? A sweep's reward-KL Pareto front, the beta it recommends, and a search trial's objective (issue 15).

Pure functions over the report's rows ({"run", "status", "results": results.json}); tests/test_recommend.py
runs them on toy rows. A sweep is ranked by the judge's mean reward of policy samples when its runs have
one, else by the held-out implicit-reward accuracy every finished DPO run has: both compare across betas,
while rewards/margins do not (reward = beta x log-ratio, so margins grow with beta by construction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from train.core.errors import ConfigError

JUDGE_REWARD = "dpo.judge_reward"
HELD_OUT_ACCURACY = "dpo.held_out.rewards/accuracies"
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

    @property
    def beta_text(self) -> str:
        """beta=0.1, or beta=adaptive (0.1 at step 0) where beta moves during training."""
        value = "?" if self.beta is None else f"{self.beta:g}"
        return f"beta={value}" if self.schedule == "constant" else f"beta={self.schedule} ({value} at step 0)"


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
                                beta_rule(row["results"])))
    return points, missing


def pareto_front(points: list[Point]) -> list[Point]:
    """Points with a KL that no other point beats on both axes (reward at least as high, KL at most as high,
    one strictly), by increasing KL: the DPO paper's reward-KL frontier (fig. 2)."""
    placed = [p for p in points if p.kl is not None]
    front = [p for p in placed if not any(
        q.score >= p.score and q.kl <= p.kl and (q.score > p.score or q.kl < p.kl) for q in placed)]
    return sorted(front, key=lambda p: (p.kl, -p.score))


@dataclass(frozen=True)
class Recommendation:
    metric: str
    kl_budget: Optional[float]
    point: Optional[Point]
    reason: str  # why this run, or why none

    def line(self) -> str:
        if self.point is None:
            return f"recommended: none ({self.reason})"
        kl = "" if self.point.kl is None else f", KL {self.point.kl:.4g}"
        return (f"recommended: {self.point.beta_text} ({self.point.run}: {LABELS[self.metric]} "
                f"{self.point.score:.4g}{kl}; {self.reason})")


def recommend(rows: list[dict], kl_budget: Optional[float] = None) -> Recommendation:
    """The highest-scoring run whose KL is within the budget (no budget: the best score, which is on the front).
    Ties go to the lower KL (closer to the reference), then the larger beta (the more conservative run)."""
    metric = ranking_metric(rows)
    points, _ = scored(rows, metric)
    label = LABELS[metric]
    if kl_budget is not None:
        points = [p for p in points if p.kl is not None and p.kl <= kl_budget]
    if not points:
        why = "no finished run has a " + label if kl_budget is None else f"no run has a {label} and KL <= {kl_budget:g}"
        return Recommendation(metric, kl_budget, None, why)
    best = min(points, key=lambda p: (-p.score, math.inf if p.kl is None else p.kl, -(p.beta or 0.0)))
    where = "among all runs" if kl_budget is None else f"within the KL budget {kl_budget:g}"
    return Recommendation(metric, kl_budget, best, f"highest {label} {where}")
