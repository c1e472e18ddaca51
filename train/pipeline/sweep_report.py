"""The sweep report (train/report.py runs it, and Hydra's callback when a multirun ends).

Writes into the sweep directory:
  summary.csv          one row per run: status, beta and every numeric results.json field
  report.md            beta vs final rewards/accuracies, rewards/margins, judge reward, win rate, KL, runtime
  reward_vs_kl.png     judge reward against KL(policy || reference), one point per beta (DPO paper, fig. 2)
  margins.png          rewards/margins over training steps, one line per beta
Runs whose directory has no finished results.json are listed as failed, not left out.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from train.core.files import read_json  # noqa: E402
from train.core.trees import flatten as flatten_tree  # noqa: E402

TABLE = [  # (column, results.json path)
    ("beta", "beta"),
    ("rewards/accuracies", "dpo.train.rewards/accuracies"),
    ("rewards/margins", "dpo.train.rewards/margins"),
    ("judge reward", "dpo.judge_reward"),
    ("sft judge reward", "sft.judge_reward"),
    ("win rate", "dpo.win_rate_vs_reference"),
    ("KL", "dpo.kl_to_reference"),
    ("runtime s", "runtime_total_s"),
]


def flatten(tree: Any) -> dict[str, Any]:
    return flatten_tree(tree, ".")


def load_runs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every run directory of the sweep (a subdirectory holding config.yaml, results or a job status)."""
    runs = []
    for run_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not any((run_dir / f).exists() for f in ("config.yaml", "results.json", "job_status.json")):
            continue
        results = read_json(run_dir / "results.json", {})
        status = read_json(run_dir / "job_status.json", {})
        ok = bool(results.get("dpo", {}).get("train")) and status.get("status", "COMPLETED") == "COMPLETED"
        if results:
            results["runtime_total_s"] = round(sum(results.get("runtime_s", {}).values()), 2)
        runs.append({
            "run": run_dir.name,
            "status": "ok" if ok else "failed",
            "error": status.get("error") or (None if ok else "no finished results.json"),
            "results": results,
        })
    return sorted(runs, key=lambda r: (r["results"].get("beta") is None, r["results"].get("beta") or 0, r["run"]))


def write_csv(runs: list[dict], path: Path) -> None:
    rows = []
    for run in runs:
        numeric = {k: v for k, v in flatten(run["results"]).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        rows.append({"run": run["run"], "status": run["status"], **numeric})
    columns = ["run", "status", "beta"] + sorted({k for row in rows for k in row} - {"run", "status", "beta"})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def fmt(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def write_markdown(runs: list[dict], path: Path, sweep_dir: Path) -> None:
    lines = [f"# Sweep report: {sweep_dir}", "", "| run | status | " + " | ".join(c for c, _ in TABLE) + " |",
             "|---|---|" + "---|" * len(TABLE)]
    for run in runs:
        flat = flatten(run["results"])
        lines.append(f"| {run['run']} | {run['status']} | " + " | ".join(fmt(flat.get(k)) for _, k in TABLE) + " |")
    failed = [r for r in runs if r["status"] == "failed"]
    if failed:
        lines += ["", "## Failed runs", ""] + [f"- {r['run']}: {r['error']}" for r in failed]
    lines += ["", "Plots: reward_vs_kl.png (judge reward against KL to the reference, one point per beta), "
              "margins.png (train rewards/margins over steps, one line per beta).", ""]
    path.write_text("\n".join(lines))


def plot(runs: list[dict], sweep_dir: Path) -> None:
    ok = [r["results"] for r in runs if r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    points = [(r["dpo"].get("kl_to_reference"), r["dpo"].get("judge_reward"), r.get("beta")) for r in ok]
    points = [p for p in points if p[0] is not None and p[1] is not None]
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color="tab:blue")
        for kl, reward, beta in points:
            ax.annotate(f"β={beta:g}", (kl, reward), textcoords="offset points", xytext=(5, 5))
        sft_rewards = [r["sft"]["judge_reward"] for r in ok if r.get("sft", {}).get("judge_reward") is not None]
        if sft_rewards:
            ax.axhline(sum(sft_rewards) / len(sft_rewards), color="gray", ls="--", label="reference (SFT)")
            ax.legend()
    else:
        ax.text(0.5, 0.5, "no judged runs (data without a judge, or all runs failed)", ha="center", transform=ax.transAxes)
    ax.set(xlabel="KL(policy || reference), nats per sample", ylabel="judge reward", title="Reward vs KL frontier")
    fig.tight_layout()
    fig.savefig(sweep_dir / "reward_vs_kl.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in ok:
        history = r["dpo"].get("history", [])
        ax.plot([e["step"] for e in history], [e["rewards/margins"] for e in history], label=f"β={r.get('beta'):g}")
    ax.set(xlabel="step", ylabel="train rewards/margins", title="Reward margin during DPO")
    if ok:
        ax.legend()
    fig.tight_layout()
    fig.savefig(sweep_dir / "margins.png", dpi=120)
    plt.close(fig)


def write_report(sweep_dir: Path) -> Path:
    runs = load_runs(sweep_dir)
    write_csv(runs, sweep_dir / "summary.csv")
    write_markdown(runs, sweep_dir / "report.md", sweep_dir)
    plot(runs, sweep_dir)
    return sweep_dir
