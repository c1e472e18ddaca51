"""Throughput: the figures logged to W&B during a run, `make bench` in its quick mode, and the GPU
check's CPU smoke run; the operator tools in launch/ import (fast tier)."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import wandb_file
from helpers.runs import REPO, read_results, run_train
from launch.bench_profile_runs import profile_rows, summarize
from launch.bench_profiles import MAX_LENGTH, PROFILES, draw_lengths, make_pairs, single_token_words, split_turns
from train.data import synthetic
from train.models.tiny import build_tokenizer

THROUGHPUT = ("throughput/tokens_per_s", "throughput/mfu", "throughput/peak_memory_mb")


def wandb_rows(offline_run_dir: Path) -> list[dict]:
    return wandb_file.history(wandb_file.run_file(offline_run_dir))


@pytest.mark.parametrize("module", sorted(f"launch.{p.stem}" for p in (REPO / "launch").glob("*.py")))
def test_launch_tools_import(module):
    """A renamed or moved train/ module breaks these at import: seen here in seconds, not in the slow tier."""
    importlib.import_module(module)


@pytest.mark.slow
def test_throughput_reaches_wandb_at_every_logging_step_of_sft_and_dpo(tmp_path):
    proc = run_train("debug=fast", "eval.enabled=false", "+dpo.args.max_steps=4", "dpo.args.logging_steps=2",
                     "dpo.args.warmup_steps=0", "sft.args.logging_steps=4", output_root=tmp_path, wandb=True)
    results = read_results(proc)
    dpo_rows = [r for r in wandb_rows(Path(results["wandb"]["dir"])) if "train/loss" in r]
    assert [r["train/global_step"] for r in dpo_rows] == [2, 4]
    (sft_run,) = (tmp_path / "sft" / "wandb").glob("offline-run-*")
    sft_rows = [r for r in wandb_rows(sft_run) if "train/loss" in r]
    assert sft_rows
    for rows, per_s in ((dpo_rows, "throughput/pairs_per_s"), (sft_rows, "throughput/rows_per_s")):
        for row in rows:
            for key in (*THROUGHPUT, per_s):
                assert row[f"train/{key}"] > 0, (key, row)
            assert row["train/throughput/mfu"] < 1
    # The same figures are in the trainer's history (results.json) as in W&B.
    assert results["dpo"]["history"][-1]["throughput/pairs_per_s"] == dpo_rows[-1]["train/throughput/pairs_per_s"]


@pytest.mark.slow
def test_make_bench_quick_prints_a_table_and_one_json_object_last(tmp_path):
    env = {**os.environ, "BENCH_QUICK": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(["make", "--no-print-directory", "bench", f"ARGS=--out {tmp_path}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["mode"] == "quick"
    for key in ("dpo_step_ratio", "sweep_cost_ratio", "zero3_rss_ratio"):
        assert result[key] > 0, key
    assert 0 < result["mfu"] < 1
    assert {"cpu", "cores"} <= set(result["machine"]) and result["threads"]["torch_threads"] >= 1
    assert {"torch", "transformers", "trl", "deepspeed"} <= set(result["versions"])
    assert result["rounds"]["dpo_steps"] >= 1
    steps = result["details"]["steps"]["sides"]
    assert len(steps["trl_default"]) == len(steps["project"]) == result["rounds"]["dpo_steps"]
    sweep = result["details"]["sweep"]["rounds"][0]
    betas = result["details"]["sweep"]["betas"]
    assert sweep["project"]["runs"] == sweep["trl_default"]["runs"] == len(betas)
    table = "\n".join(lines[:-1])
    assert "dpo_step_ratio" in table and "zero3_rss_ratio" in table and "pairs/s" in table


@pytest.mark.slow
def test_gpu_check_smoke_trains_the_project_dpo_on_cpu_and_prints_one_json_object_last(tmp_path):
    proc = subprocess.run([sys.executable, "launch/gpu_check.py", "--smoke", "--out", str(tmp_path)], cwd=REPO,
                          env={**os.environ, "WANDB_MODE": "disabled"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    results = json.loads(lines[-1])["layouts"]
    assert [r["layout"] for r in results] == ["padded", "prefix_shared", "packed"]  # each layout really ran
    for result in results:
        assert result["gpu"] == "cpu (smoke)" and result["dtype"] == "float32"
        assert result["steps_timed"] == 2 and result["batch_pairs"] == 8
        assert result["tokens_per_s"] > 0 and result["pairs_per_s"] > 0 and 0 < result["mfu"] < 1
        assert result["parameters"] > 0 and result["reference"] in ("precomputed", "model", "lora")
    assert sum(line.startswith("gpu_check: cpu (smoke)") for line in lines) == 3  # one summary line per layout


# --- length profiles: the generator is a pure function; the measured part runs in `make bench` only ---

def test_length_profiles_draw_around_the_published_medians_and_keep_every_row():
    for name, profile in PROFILES.items():
        lengths = draw_lengths(profile, 4000, seed=0)
        assert np.median(lengths["prompt"]) == pytest.approx(profile.prompt_median, rel=0.05), name
        responses = np.concatenate([lengths["chosen"], lengths["rejected"]])
        assert np.median(responses) == pytest.approx(profile.response_median, rel=0.05), name
        assert lengths["prompt"].max() < MAX_LENGTH and min(v.min() for v in lengths.values()) >= 1, name
    # What the issue asks of each profile: long post / short summary, medium prompt / long answers, HH in between.
    tldr, uf, hh = PROFILES["tldr"], PROFILES["ultrafeedback"], PROFILES["hh"]
    assert tldr.prompt_median > 10 * tldr.response_median and uf.response_median > 2 * uf.prompt_median
    assert hh.max_turns > 1 and hh.prompt_median > hh.response_median


def test_profile_pairs_have_the_drawn_token_counts_under_the_chat_template():
    tokenizer = build_tokenizer(synthetic.corpus(0), 1024)
    words = single_token_words(tokenizer)
    lengths = draw_lengths(PROFILES["hh"], 6, seed=3)
    for i, row in enumerate(make_pairs(PROFILES["hh"], 6, words, seed=3)):
        prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)
        full = tokenizer.apply_chat_template(row["prompt"] + row["chosen"], tokenize=True)
        prompt, full = (x["input_ids"] if hasattr(x, "keys") else x for x in (prompt, full))
        messages = len(split_turns(int(lengths["prompt"][i]), int(lengths["turns"][i])))
        assert len(row["prompt"]) == messages
        assert full[:len(prompt)] == prompt  # TRL's prompt/completion split falls on the template's boundary
        # the template adds <|role|> and <|end|> per message and <|assistant|>; the response ends with <|end|>
        assert len(prompt) == lengths["prompt"][i] + 2 * messages + 1
        assert len(full) - len(prompt) == lengths["chosen"][i] + 1
    assert split_turns(7, 4) == [1] * 7 and sum(split_turns(100, 3)) == 100


def test_profile_ratios_pair_the_sides_of_each_round():
    def run(pairs_per_s, ref_pass_s=None, memory=None):
        return {"pairs_per_s": pairs_per_s, "ref_pass_s": ref_pass_s, "step_peak_alloc_mb": memory,
                "padding_fraction": 0.1, "layout": "prefix_shared"}

    # round 2 ran on a machine twice as busy: paired ratios stay 2.0 / 1.5 where ratios of medians would not
    sides = {"trl_default": [run(1.0), run(0.5), run(1.0)],
             "trl_tuned": [run(4 / 3, 30.0, 600.0), run(2 / 3, 60.0), run(4 / 3, 30.0)],
             "project": [run(2.0, 10.0, 300.0), run(1.0, 20.0), run(2.0, 15.0)]}
    figures = summarize(sides)
    assert figures["vs_trl_default"] == pytest.approx(2.0) and figures["vs_trl_tuned"] == pytest.approx(1.5)
    assert figures["ref_pass_speedup"] == pytest.approx(3.0) and figures["peak_memory_ratio"] == pytest.approx(0.5)
    result = {"sizes": {"batch": 2, "rounds": 3}, "batching": "auto",
              "by_vocab": {"32000": {"tldr": {**figures, "sides": sides,
                                              "lengths": {"prompt_median": 380.0, "response_median": 34.0}}}}}
    table = "\n".join(profile_rows(result))
    assert "prefix_shared" in table and "tldr" in table and "targets:" in table
