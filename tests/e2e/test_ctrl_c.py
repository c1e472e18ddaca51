"""Ctrl-C: the first one saves at the step boundary and stops like SIGTERM (exit 75, resumable);
a second one stops at once (exit 130); neither prints a traceback."""

import json

import pytest

from helpers.runs import read_results, run_train

pytestmark = pytest.mark.slow
SMALL = ("debug=fast", "sft.enabled=false", "eval.enabled=false", "data.synthetic.num_pairs=256", "+dpo.args.max_steps=6",
         "checkpoint.every_steps=0",
         "wandb.enabled=false", "name=ctrl-c")


def test_first_ctrl_c_saves_and_stops_and_the_rerun_resumes(tmp_path):
    proc = run_train(*SMALL, output_root=tmp_path, check=False, env={"DPO_FAULT_INJECT": "sigint:3"})
    assert proc.returncode == 75, proc.stderr[-3000:]
    assert "interrupted: Ctrl-C; saving a checkpoint at the next step boundary" in proc.stdout
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr
    run_dir = tmp_path / "runs" / "ctrl-c"
    assert (run_dir / "dpo" / "checkpoint-3" / "COMPLETE").exists()
    assert [json.loads(line)["step"] for line in (run_dir / "preemptions.jsonl").read_text().splitlines()] == [3]
    again = run_train(*SMALL, output_root=tmp_path)
    assert "resume: continuing from" in again.stdout and read_results(again)["dpo"]["steps"] == 6


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    proc = run_train(*SMALL, output_root=tmp_path, check=False, env={"DPO_FAULT_INJECT": "sigint:3,sigint:3"})
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "interrupted: stopped at once" in proc.stdout
    assert "Traceback" not in proc.stderr
