"""Tier 3: the real pipeline on the tiny model (CPU, one process), as `python -m train` runs it."""

import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from helpers import wandb_file
from helpers.runs import read_results, results_path, run_train
from train.config.compose import compose

pytestmark = pytest.mark.slow
REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")


@pytest.fixture(scope="module")
def full_run(shared_output_root):
    return run_train("debug=fast", output_root=shared_output_root, wandb=True)


def test_dpo_beats_its_reference_under_the_judge(full_run):
    results = read_results(full_run)
    sft, dpo = results["sft"], results["dpo"]
    assert dpo["judge_reward"] > sft["judge_reward"] + 1.0, (sft["judge_reward"], dpo["judge_reward"])
    assert dpo["win_rate_vs_reference"] >= 0.7
    assert dpo["train"]["rewards/accuracies"] >= 0.75
    assert dpo["kl_to_reference"] > 0
    assert results["beta"] == 0.1
    dist = results["distributed"]
    assert (dist["world_size"], dist["num_machines"], dist["zero_stage"]) == (1, 1, 0)
    # Other tests share this output root: SFT may have been trained by an earlier run and reused here.
    assert set(results["runtime_s"]) == ({"dpo", "eval"} if sft.get("reused") else {"sft", "dpo", "eval"})
    for key in REWARD_KEYS:
        assert key in dpo["train"]


def test_run_directory_holds_config_policy_and_samples(full_run, shared_output_root):
    run_dir = Path(read_results(full_run)["dpo"]["policy_path"]).parent
    assert run_dir.name == "debug=fast"
    # the resolved config the run was composed with, whole (what a rerun or a reader of the run needs)
    composed = compose(["debug=fast", f"output_root={shared_output_root}"])
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == OmegaConf.to_container(composed, resolve=True)
    assert (run_dir / "policy" / "model.safetensors").exists()
    assert not list((run_dir / "policy").glob("pytorch_model*.bin"))  # weights as safetensors only
    samples = [json.loads(line) for line in (run_dir / "eval_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 32 and {"policy", "reference", "policy_reward"} <= set(samples[0])


def test_wandb_offline_file_has_reward_metrics_at_every_logging_step(full_run):
    results = read_results(full_run)
    run_dir = Path(results["wandb"]["dir"])
    assert results["wandb"]["run_id"] in run_dir.name
    rows = wandb_file.history(wandb_file.run_file(run_dir))
    train_rows = [r for r in rows if "train/loss" in r]
    logging_steps, total = 5, results["dpo"]["steps"]
    expected_steps = list(range(logging_steps, total + 1, logging_steps))
    assert [r["train/global_step"] for r in train_rows] == expected_steps
    for row in train_rows:
        for key in REWARD_KEYS + ("beta",):
            assert f"train/{key}" in row, (key, row)
    final = [r for r in rows if "final/judge_reward" in r]
    assert final and final[0]["final/win_rate_vs_reference"] == results["dpo"]["win_rate_vs_reference"]


def test_secrets_from_the_environment_never_reach_disk(shared_output_root, tmp_path):
    import os

    secret = "sk-test-secret-value-123"
    os.environ["WANDB_API_KEY"], os.environ["HF_TOKEN"] = secret, secret
    try:
        proc = run_train("debug=fast", "beta.value=0.2", "eval.enabled=false", "+dpo.args.max_steps=4", "wandb.mode=offline",
                         output_root=shared_output_root)
    finally:
        del os.environ["WANDB_API_KEY"], os.environ["HF_TOKEN"]
    run_dir = Path(read_results(proc)["dpo"]["policy_path"]).parent
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in proc.stdout + proc.stderr


def test_stages_run_on_their_own_and_sft_is_shared(shared_output_root, full_run):
    first = read_results(full_run)
    short = ("debug=fast", "+dpo.args.max_steps=4")  # a few steps: what is checked is which stage ran on what
    proc = run_train(*short, "beta.value=0.3", "stage=dpo", output_root=shared_output_root)
    assert "sft: reusing" not in proc.stdout  # stage=dpo does not touch SFT at all
    proc = run_train(*short, "beta.value=0.3", "stage=eval", output_root=shared_output_root)
    results = read_results(proc)
    assert results["dpo"]["reference_path"] == first["sft"]["path"]
    assert results["beta"] == 0.3 and isinstance(results["dpo"]["judge_reward"], float)
    samples = (results_path(proc).parent / "eval_samples.jsonl").read_text().splitlines()
    assert len(samples) == 32  # stage=eval sampled and judged the beta=0.3 policy (debug=fast: 32 prompts)
    # A whole run of another beta reuses the SFT model. (Another beta: rerunning beta=0.3, whose stages are
    # all done, only says it is finished.)
    proc = run_train(*short, "beta.value=0.4", "eval.enabled=false", output_root=shared_output_root)
    assert "sft: reusing" in proc.stdout
    assert read_results(proc)["sft"]["path"] == first["sft"]["path"]


def test_missing_stage_input_is_a_one_line_error(tmp_path):
    proc = run_train("debug=fast", "stage=eval", output_root=tmp_path, check=False)
    assert proc.returncode == 2
    assert "error: no finished sft model at" in proc.stderr and "Traceback" not in proc.stderr


def test_dry_run_builds_and_stops(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    proc = run_train("debug=fast", "dry_run=true", output_root=tmp_path)
    assert "results:" not in proc.stdout
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("dry run: ")]
    summary = json.loads(line.removeprefix("dry run: "))
    # It built the data (debug=fast sizes) and loaded the model it would train ...
    assert summary["rows"] == {"sft": 512, "train_pairs": 512, "test_pairs": 32, "eval_prompts": 32}
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(summary["model"]))
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())
    assert Path(summary["run_dir"]) == tmp_path / "runs" / "debug=fast"
    assert not (tmp_path / "sft").exists() and not (tmp_path / "runs" / "debug=fast" / "results.json").exists()
