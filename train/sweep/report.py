"""The sweep report (train/report.py runs it, and Hydra's callback when a multirun or search ends).

Writes into the sweep directory:
  summary.csv          one row per run: status, recommended (yes/no), beta and every numeric results.json field,
                       the ranking metric's ci95_low, ci95_high, ci_n and tied (yes/no)
  report.md            the recommended beta and why; beta vs final metrics; each run's score with its 95% interval
                       and sample size, and the runs tied with the best; runs left out of the plot and why
  reward_vs_kl.png     judge reward (else held-out implicit-reward accuracy) against KL(policy || reference),
                       one point per run, the Pareto front and the recommended run marked (DPO paper, fig. 2)
  margins.png          what compares across betas over steps: the log-ratio margin (rewards/margins / beta)
                       and train accuracy, with the held-out accuracy at the end
Runs whose directory has no finished results.json are listed as failed, not left out.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional

from train.core.trees import flatten as flatten_tree
from train.sweep.recommend import (LABELS, TIE_RULE, Point, Recommendation, ranking_metric, recommend, scored,
                                      value_at)
from train.sweep.plots import plot_margins, plot_reward_vs_kl

TABLE = [  # (column, results.json path)
    ("beta", "beta"),
    ("beta rule", "beta_schedule.schedule"),  # constant, linear, cosine, adaptive: beta alone is beta0 for the last ones
    ("rewards/accuracies", "dpo.train.rewards/accuracies"),
    ("rewards/margins", "dpo.train.rewards/margins"),
    ("judge reward", "dpo.judge_reward"),
    ("sft judge reward", "sft.judge_reward"),
    ("win rate", "dpo.win_rate_vs_reference"),
    ("KL", "dpo.kl_to_reference"),
    ("judge agreement", "dpo.judge_agreement"),
    ("held-out accuracy", "dpo.held_out.rewards/accuracies"),
    ("runtime s", "runtime_total_s"),
]
MARGINS_CAPTION = (
    "margins.png: left, the implicit log-ratio margin, rewards/margins / beta (log pi/pi_ref of chosen minus "
    "rejected); right, train implicit-reward accuracy over steps, the held-out accuracy as a diamond at the end. "
    "Raw rewards/margins are beta x that log-ratio, so they grow with beta by construction and do not compare "
    "across betas (the table's rewards/margins column neither); these two do.")


def flatten(tree: Any) -> dict[str, Any]:
    return flatten_tree(tree, ".")


def read_object(path: Path) -> tuple[dict, Optional[str]]:
    """A run's JSON file as a dict, and what is wrong with it (unreadable, not JSON, not an object): a damaged
    file marks its run failed in the report instead of ending the report."""
    if not path.exists():
        return {}, None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return {}, f"{path.name} unreadable ({type(err).__name__}: {str(err)[:80]})"
    return (data, None) if isinstance(data, dict) else ({}, f"{path.name} is not a JSON object")


def judge_rewards(path: Path) -> list[float]:
    """Every prompt's policy_reward from a run's eval_samples.jsonl (the judge reward's bootstrap resamples
    them); empty when the file is missing, unjudged or damaged: the run then has no interval, and says so."""
    try:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError):
        return []
    rewards = [r.get("policy_reward") if isinstance(r, dict) else None for r in records]
    ok = all(value_at({"v": r}, "v") is not None for r in rewards)
    return [float(r) for r in rewards] if ok else []


def load_runs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every run directory of the sweep (a subdirectory holding config.yaml, results or a job status)."""
    runs = []
    for run_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not any((run_dir / f).exists() for f in ("config.yaml", "results.json", "job_status.json")):
            continue
        results, damaged = read_object(run_dir / "results.json")
        status, status_damaged = read_object(run_dir / "job_status.json")
        dpo = results.get("dpo")
        ok = (isinstance(dpo, dict) and bool(dpo.get("train")) and status.get("status", "COMPLETED") == "COMPLETED"
              and not status_damaged)
        runtimes = results.get("runtime_s")
        if isinstance(runtimes, dict):
            results["runtime_total_s"] = round(sum(v for v in runtimes.values() if value_at({"v": v}, "v") is not None), 2)
        runs.append({
            "run": run_dir.name,
            "status": "ok" if ok else "failed",
            "error": damaged or status_damaged or status.get("error") or (None if ok else "no finished results.json"),
            "results": results,
            "judge_rewards": judge_rewards(run_dir / "eval_samples.jsonl"),
        })
    return sorted(runs, key=lambda r: (value_at(r["results"], "beta") is None, value_at(r["results"], "beta") or 0,
                                       r["run"]))


def is_recommended(run: dict, recommendation: Recommendation) -> bool:
    return recommendation.point is not None and run["run"] == recommendation.point.run


def uncertainty_fields(point: Optional[Point], recommendation: Recommendation) -> dict:
    """summary.csv's interval columns for one run (blank for a run without the metric or an interval)."""
    if point is None:
        return {}
    tied = "yes" if any(p.run == point.run for p in recommendation.tied) and len(recommendation.tied) > 1 else "no"
    if point.interval is None:
        return {"tied": tied}
    i = point.interval
    return {"ci95_low": round(i.low, 6), "ci95_high": round(i.high, 6), "ci_n": i.n, "tied": tied}


def write_csv(runs: list[dict], recommendation: Recommendation, points: list[Point], path: Path) -> None:
    by_run = {p.run: p for p in points}
    rows = []
    for run in runs:
        numeric = {k: v for k, v in flatten(run["results"]).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        recommended = "yes" if is_recommended(run, recommendation) else "no"
        rows.append({"run": run["run"], "status": run["status"], "recommended": recommended, **numeric,
                     **uncertainty_fields(by_run.get(run["run"]), recommendation)})
    fixed = ["run", "status", "recommended", "beta"]
    columns = fixed + sorted({k for row in rows for k in row} - set(fixed))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def fmt(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def uncertainty_lines(points: list[Point], recommendation: Recommendation) -> list[str]:
    """One line per scored run: its score, interval and sample size, and whether it is tied with the best."""
    label, tied = LABELS[recommendation.metric], {p.run for p in recommendation.tied}
    lines = ["", f"## Uncertainty ({label})", "", TIE_RULE, ""]
    for p in sorted(points, key=lambda p: -p.score):
        interval = p.interval.text() if p.interval else "no interval (no per-item results saved)"
        mark = ("recommended" if recommendation.point and p.run == recommendation.point.run
                else "tied" if p.run in tied and len(tied) > 1 else "")
        kl = "" if p.kl is None else f", KL {p.kl:.4g}"
        lines.append(f"- {p.beta_text} ({p.run}): {p.score:.4g}, {interval}{kl}" + (f": {mark}" if mark else ""))
    return lines


def write_markdown(runs: list[dict], recommendation: Recommendation, not_plotted: list[str], path: Path,
                   sweep_dir: Path, points: list[Point]) -> None:
    budget = "none (best reward)" if recommendation.kl_budget is None else f"{recommendation.kl_budget:g} nats"
    lines = [f"# Sweep report: {sweep_dir}", "", "| run | status | " + " | ".join(c for c, _ in TABLE)
             + " | recommended |", "|---|---|" + "---|" * (len(TABLE) + 1)]
    for run in runs:
        flat = flatten(run["results"])
        mark = "yes" if is_recommended(run, recommendation) else ""
        lines.append(f"| {run['run']} | {run['status']} | " + " | ".join(fmt(flat.get(k)) for _, k in TABLE)
                     + f" | {mark} |")
    lines += ["", "## Recommendation", "", recommendation.line(), "",
              f"Ranked by {LABELS[recommendation.metric]} (`{recommendation.metric}`); KL budget (report.kl_budget): "
              f"{budget}. The judge reward is used when runs were judged, else the held-out implicit-reward accuracy."]
    lines += uncertainty_lines(points, recommendation)
    failed = [r for r in runs if r["status"] == "failed"]
    if failed:
        lines += ["", "## Failed runs", ""] + [f"- {r['run']}: {r['error']}" for r in failed]
    if not_plotted:
        lines += ["", "## Not on reward_vs_kl.png", ""] + [f"- {entry}" for entry in not_plotted]
    lines += ["", "## Plots", "",
              f"reward_vs_kl.png: {LABELS[recommendation.metric]} against KL(policy || reference), one point per "
              "run; the line joins the Pareto front (no other run has both more reward and less KL); the star is "
              "the recommended run.", "", MARGINS_CAPTION, ""]
    path.write_text("\n".join(lines))


def sft_judge_reward(runs: list[dict]) -> Optional[float]:
    rewards = [r["results"]["sft"]["judge_reward"] for r in runs
               if r["status"] == "ok" and r["results"].get("sft", {}).get("judge_reward") is not None]
    return sum(rewards) / len(rewards) if rewards else None


def write_report(sweep_dir: Path, kl_budget: Optional[float] = None) -> Recommendation:
    runs = load_runs(sweep_dir)
    recommendation = recommend(runs, kl_budget)
    points, missing = scored(runs, ranking_metric(runs))
    not_plotted = [f"{run}: {why}" for run, why in missing]
    not_plotted += [f"{p.run}: no KL estimate (eval.enabled=false?)" for p in points if p.kl is None]
    write_csv(runs, recommendation, points, sweep_dir / "summary.csv")
    write_markdown(runs, recommendation, not_plotted, sweep_dir / "report.md", sweep_dir, points)
    plot_reward_vs_kl(points, recommendation, not_plotted, sft_judge_reward(runs), sweep_dir / "reward_vs_kl.png")
    plot_margins([r["results"] for r in runs if r["status"] == "ok"], sweep_dir / "margins.png")
    return recommendation
