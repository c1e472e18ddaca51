"""Sweeps: locally (Hydra multirun) and on the local SLURM cluster (hydra-submitit-launcher), and the report."""

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers.runs import REPO


def make(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"make {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def check_sweep(proc: subprocess.CompletedProcess, output_root: Path, betas: list[float],
                experiment: str = "default") -> list[dict]:
    sweep_dir = output_root / "sweeps" / experiment
    assert f"report: {sweep_dir}" in proc.stdout
    for name in ("summary.csv", "report.md", "reward_vs_kl.png", "margins.png"):
        assert (sweep_dir / name).stat().st_size > 0, name
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert sorted(float(r["beta"]) for r in rows) == betas
    assert all(r["status"] == "ok" for r in rows) and "dpo.train.rewards/margins" in rows[0]
    report = (sweep_dir / "report.md").read_text().splitlines()
    header = [c.strip() for c in report[2].strip("|").split("|")]
    assert header[:3] == ["run", "status", "beta"] and header[-1] == "recommended"
    assert {"rewards/accuracies", "judge reward", "KL", "held-out accuracy"} <= set(header)
    assert any(line.startswith("recommended: beta=") for line in report)
    assert sum(line.startswith("| beta.value=") and "| ok |" in line for line in report) == len(betas)
    results = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/results.json"))]
    assert len(results) == len(betas)
    # SFT ran once for the whole sweep: one SFT model on disk, every beta run reused it.
    assert len([p for p in (output_root / "sft").iterdir() if p.is_dir() and p.name != "wandb"]) == 1
    return results


@pytest.mark.slow
def test_local_sweep_trains_sft_once_and_reports(tmp_path):
    proc = make("sweep", "BETAS=0.1,0.5", f"ARGS=debug=fast eval.enabled=false wandb.mode=disabled output_root={tmp_path}")
    results = check_sweep(proc, tmp_path, [0.1, 0.5])
    assert sorted(r["sft"]["reused"] for r in results) == [False, True]
    assert proc.stdout.count("sft: reusing") == 1


def test_report_lists_failed_runs(tmp_path):
    from train.report import write_report

    ok, failed = tmp_path / "beta.value=0.1", tmp_path / "beta.value=0.5"
    ok.mkdir(), failed.mkdir()
    history = [{"step": 5, "rewards/margins": 0.1}, {"step": 10, "rewards/margins": 0.3}]
    (ok / "results.json").write_text(json.dumps({"beta": 0.1, "runtime_s": {"dpo": 2.0}, "sft": {"judge_reward": 0.0},
        "dpo": {"train": {"rewards/margins": 0.3}, "history": history, "judge_reward": 2.0, "kl_to_reference": 1.5}}))
    (failed / "config.yaml").write_text("beta: {value: 0.5}\n")
    write_report(tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "| beta.value=0.5 | failed |" in report and "beta.value=0.5: no finished results.json" in report
    rows = {r["run"]: r for r in csv.DictReader((tmp_path / "summary.csv").open())}
    assert rows["beta.value=0.1"]["status"] == "ok" and rows["beta.value=0.1"]["dpo.kl_to_reference"] == "1.5"
    assert rows["beta.value=0.5"]["status"] == "failed"


@pytest.mark.slurm
def test_two_node_job_on_slurm(slurm_cluster, slurm_output_root):
    proc = make("submit", "NODES=2", "WAIT=1", "ARGS=debug=fast deepspeed=zero3 eval.enabled=false wandb.mode=disabled "
                f"experiment=two_nodes output_root={slurm_output_root}")
    assert "job: " in proc.stdout
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("results: ")]
    results = json.loads(Path(line.removeprefix("results: ")).read_text())
    assert (results["distributed"]["world_size"], results["distributed"]["num_machines"]) == (2, 2)
    assert results["distributed"]["zero_stage"] == 3
    assert results["dpo"]["train"]["rewards/accuracies"] > 0.6


@pytest.mark.slurm
def test_slurm_sweep_trains_sft_once_and_reports(slurm_cluster, slurm_output_root):
    proc = make("sweep-slurm", "BETAS=0.1,0.5", "ARGS=debug=fast eval.enabled=false wandb.mode=disabled "
                f"experiment=slurm_sweep output_root={slurm_output_root}")
    results = check_sweep(proc, slurm_output_root, [0.1, 0.5], experiment="slurm_sweep")
    assert all(r["sft"]["reused"] for r in results)  # the SFT job ran first; every beta job reused it
    sft_job = slurm_output_root / "sweeps" / "slurm_sweep" / ".sft"
    assert len(list(sft_job.glob(".submitit/*/*_result.pkl"))) == 1  # exactly one SFT job
