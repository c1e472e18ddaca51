"""The sweep report's plots: the reward-KL frontier and what compares across betas over training steps."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from train.config.choices import BetaSchedule  # noqa: E402
from train.sweep.recommend import (  # noqa: E402
    JUDGE_REWARD, LABELS, Point, Recommendation, beta_rule, pareto_front, value_at)


def run_label(results: dict) -> str:
    """β=0.1, or β=0.1 (cosine) for a run whose beta follows a schedule (beta is then its value at step 0)."""
    schedule, beta = beta_rule(results), value_at(results, "beta")
    text = "β=?" if beta is None else f"β={beta:.3g}"
    return text if schedule == BetaSchedule.constant else f"{text} ({schedule})"


def plot_reward_vs_kl(points: list[Point], recommendation: Recommendation, not_plotted: list[str],
                      sft_judge_reward: Optional[float], path: Path) -> None:
    metric = recommendation.metric
    placed = [p for p in points if p.kl is not None]
    front = pareto_front(placed)
    fig, ax = plt.subplots(figsize=(6.5, 5))
    if placed:
        ax.scatter([p.kl for p in placed], [p.score for p in placed], color="tab:blue", zorder=2, label="runs")
        with_interval = [p for p in placed if p.interval is not None]
        if with_interval:  # the 95% interval of each run's score: overlapping bars are runs the data cannot separate
            ax.errorbar([p.kl for p in with_interval], [p.score for p in with_interval],
                        yerr=[[p.score - p.interval.low for p in with_interval],
                              [p.interval.high - p.score for p in with_interval]],
                        fmt="none", ecolor="tab:blue", alpha=0.5, capsize=3, zorder=1, label="95% interval")
        ax.plot([p.kl for p in front], [p.score for p in front], "-", color="tab:orange", zorder=1,
                label="Pareto front (max reward, min KL)")
        for p in placed:
            ax.annotate(p.beta_text.replace("beta=", "β="), (p.kl, p.score),
                        textcoords="offset points", xytext=(5, 5), fontsize=8)
        chosen = recommendation.point
        if chosen is not None and chosen.kl is not None:
            ax.scatter([chosen.kl], [chosen.score], marker="*", s=250, color="tab:red", zorder=3,
                       label=f"recommended {chosen.beta_text.replace('beta=', 'β=')}")
        if metric == JUDGE_REWARD and sft_judge_reward is not None:
            ax.axhline(sft_judge_reward, color="gray", ls="--", label="reference (SFT)")
        if recommendation.kl_budget is not None:
            budget = recommendation.kl_budget
            ax.axvline(budget, color="tab:red", ls=":", label=f"KL budget {budget:g}")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no run has both a KL estimate and the metric", ha="center", transform=ax.transAxes)
    if not_plotted:  # listed on the plot itself as well as in report.md: never silently left out
        shown = "; ".join(not_plotted[:4]) + (f"; +{len(not_plotted) - 4} more" if len(not_plotted) > 4 else "")
        fig.text(0.01, 0.01, f"not plotted: {shown}", fontsize=7, wrap=True)
    axis = LABELS[metric] + ("" if metric == JUDGE_REWARD else " (no judge)")
    ax.set(xlabel="KL(policy || reference), nats per sample", ylabel=axis, title="Reward vs KL frontier")
    fig.tight_layout(rect=(0, 0.05 if not_plotted else 0, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_margins(ok_results: list[dict], path: Path) -> None:
    fig = margins_figure(ok_results)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def margins_figure(ok_results: list[dict]):
    """Left: the implicit log-ratio margin (rewards/margins / beta at that step); right: train implicit-reward
    accuracy over steps, the held-out accuracy as a diamond at the last step. Raw rewards/margins are
    beta x this log-ratio, so they grow with beta by construction and do not compare across betas. Every logged
    step is marked: a run that logged one step has no line to draw, only its marker."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, results in enumerate(ok_results):
        color, label = f"C{i % 10}", run_label(results)
        # Entries with a step, a margin and a beta (the step's, else the run's): a hand-edited or damaged history
        # loses its odd entries, not the plot.
        history = results["dpo"].get("history")
        history = [e for e in (history if isinstance(history, list) else [])
                   if isinstance(e, dict) and None not in (value_at(e, "step"), value_at(e, "rewards/margins"))
                   and (value_at(e, "beta") or value_at(results, "beta"))]
        steps = [value_at(e, "step") for e in history]
        left.plot(steps, [value_at(e, "rewards/margins") / (value_at(e, "beta") or value_at(results, "beta"))
                          for e in history], color=color, label=label, marker="o", markersize=3)
        accuracy = [(value_at(e, "step"), value_at(e, "rewards/accuracies")) for e in history
                    if value_at(e, "rewards/accuracies") is not None]
        right.plot([s for s, _ in accuracy], [a for _, a in accuracy], color=color, label=label, marker="o",
                   markersize=3)
        held_out = value_at(results, "dpo.held_out.rewards/accuracies")
        if held_out is not None and steps:
            right.scatter([value_at(results, "dpo.steps") or steps[-1]], [held_out], marker="D", color=color, zorder=3)
    left.set(xlabel="step", ylabel="log-ratio margin = rewards/margins / β",
             title="Implicit log-ratio margin (comparable across β)")
    right.set(xlabel="step", ylabel="implicit-reward accuracy", title="Train accuracy; ◆ held-out at the end")
    if ok_results:
        left.legend(fontsize=8)
    fig.tight_layout()
    return fig
