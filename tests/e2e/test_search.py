"""`make search`: a Bayesian search over beta with Hydra's Optuna sweeper, on the smallest sizes."""

import csv
import json
import os
import subprocess

import pytest

from helpers.runs import REPO
from helpers.wandb_file import records


TRIALS = 4
SMALL = "debug=fast data.synthetic.num_sft=256 data.synthetic.num_pairs=256 eval.num_prompts=16"  # 8 steps each


def tied_pick(rows: list[dict], metric: str, closest) -> dict:
    """The report's rule, from summary.csv: the trials whose interval overlaps the best-scoring one's are tied
    (summary.csv says so), and the recommendation is the tied trial closest to the reference (`closest`)."""
    top = max(rows, key=lambda r: float(r[metric]))
    tied = [r for r in rows if float(r["ci95_low"]) <= float(top["ci95_high"])
            and float(top["ci95_low"]) <= float(r["ci95_high"])]
    assert [r["run"] for r in rows if r["tied"] == "yes"] == ([r["run"] for r in tied] if len(tied) > 1 else [])
    return {"beta": float(min(tied, key=closest)["beta"])}


@pytest.mark.slow
def test_search_shares_sft_and_the_reference_pass_and_recommends_a_beta(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    command = ["make", "--no-print-directory", "search", f"TRIALS={TRIALS}", f"ARGS={SMALL} output_root={tmp_path}"]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"make search failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    sweep_dir = tmp_path / "sweeps" / "default"
    results = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/results.json"))]
    assert len(results) == TRIALS and all(0.01 <= r["beta"] <= 1.0 for r in results)
    assert proc.stdout.count("search: auto = ") == TRIALS  # each trial handed Optuna its judge reward
    assert (sweep_dir / "optimization_results.yaml").exists()
    # SFT trained by the first trial only, its reference log-probs (train and held-out pairs) computed once.
    assert sorted(r["sft"]["reused"] for r in results) == [False] + [True] * (TRIALS - 1)
    assert len([p for p in (tmp_path / "sft").iterdir() if p.is_dir() and p.name != "wandb"]) == 1
    assert len(list((tmp_path / "ref_cache").glob("*.arrow"))) == 2
    # The report over the trials: among the trials tied with the best-judged one (95% intervals over its 16 prompts
    # overlap), the one with the smallest KL; printed with its interval and n, marked and logged.
    assert f"report: {sweep_dir}" in proc.stdout
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    best = tied_pick(rows, "dpo.judge_reward", lambda r: (float(r["dpo.kl_to_reference"]), -float(r["beta"])))
    assert f"recommended: beta={best['beta']:g} (" in proc.stdout and "n=16 prompts" in proc.stdout
    assert [float(r["beta"]) for r in rows if r["recommended"] == "yes"] == [best["beta"]]
    (report_run,) = (sweep_dir / "wandb").glob("offline-run-*/run-*.wandb")  # the sweep-report W&B run
    summary = {i.key: json.loads(i.value_json) for r in records(report_run) if r.WhichOneof("record_type") == "summary"
               for i in r.summary.update if i.key}
    assert summary["report/recommended_beta"] == best["beta"] and summary["report/metric"] == "dpo.judge_reward"


@pytest.mark.slurm
def test_search_on_slurm_trains_sft_first_then_batches_of_trial_jobs(slurm_cluster, slurm_output_root):
    env = {**os.environ, "WANDB_MODE": "offline"}
    command = ["make", "--no-print-directory", "search-slurm", "TRIALS=2", "ARGS=debug=fast eval.enabled=false "
               f"wandb.mode=disabled experiment=slurm_search output_root={slurm_output_root}"]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"make search-slurm failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    sweep_dir = slurm_output_root / "sweeps" / "slurm_search"
    results = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/results.json"))]
    assert len(results) == 2 and all(r["sft"]["reused"] for r in results)  # the SFT job ran first, alone
    assert len(list((sweep_dir / ".sft").glob(".submitit/*/*_result.pkl"))) == 1
    assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 2  # one batch of n_jobs=2 trial jobs
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    best = tied_pick(rows, "dpo.held_out.rewards/accuracies", lambda r: -float(r["beta"]))  # no eval: no KL
    assert f"recommended: beta={best['beta']:g} (" in proc.stdout and " pairs; " in proc.stdout
