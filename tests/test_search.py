"""`make search`: a Bayesian search over beta with Hydra's Optuna sweeper (issue 15), on the smallest sizes."""

import csv
import json
import os
import subprocess

import pytest

from conftest import REPO
from wandb_file import records

try:  # tests/ may or may not be a package, depending on how pytest puts it on sys.path
    from tests.slurm_fixture import slurm_cluster  # noqa: F401
except ImportError:
    from slurm_fixture import slurm_cluster  # noqa: F401

TRIALS = 4
SMALL = "debug=fast data.synthetic.num_sft=256 data.synthetic.num_pairs=256 eval.num_prompts=16"  # 8 steps each


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
    # The report over the trials: the recommended beta is the best-judged trial, printed, marked and logged.
    assert f"report: {sweep_dir}" in proc.stdout
    best = max(results, key=lambda r: (r["dpo"]["judge_reward"], -r["dpo"]["kl_to_reference"], r["beta"]))
    assert f"recommended: beta={best['beta']:g} (" in proc.stdout
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert [float(r["beta"]) for r in rows if r["recommended"] == "yes"] == [best["beta"]]
    (report_run,) = (sweep_dir / "wandb").glob("offline-run-*/run-*.wandb")  # the sweep-report W&B run
    summary = {i.key: json.loads(i.value_json) for r in records(report_run) if r.WhichOneof("record_type") == "summary"
               for i in r.summary.update if i.key}
    assert summary["report/recommended_beta"] == best["beta"] and summary["report/metric"] == "dpo.judge_reward"


@pytest.mark.slurm
def test_search_on_slurm_trains_sft_first_then_batches_of_trial_jobs(slurm_cluster, tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    command = ["make", "--no-print-directory", "search-slurm", "TRIALS=2",
               f"ARGS=debug=fast eval.enabled=false output_root={tmp_path}"]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"make search-slurm failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    sweep_dir = tmp_path / "sweeps" / "default"
    results = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/results.json"))]
    assert len(results) == 2 and all(r["sft"]["reused"] for r in results)  # the SFT job ran first, alone
    assert len(list((sweep_dir / ".sft").glob(".submitit/*/*_result.pkl"))) == 1
    assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 2  # one batch of n_jobs=2 trial jobs
    best = max(results, key=lambda r: (r["dpo"]["held_out"]["rewards/accuracies"], r["beta"]))  # no eval: no KL
    assert f"recommended: beta={best['beta']:g} (" in proc.stdout
