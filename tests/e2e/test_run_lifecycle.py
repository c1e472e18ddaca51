"""One run per directory and a finished run left as it is."""

import json
import os
import signal
import subprocess
import sys

import pytest

from helpers.runs import REPO, read_results, results_path, run_train
from train.core.locks import hold_exclusive, release

pytestmark = pytest.mark.slow
SMALL = ("debug=fast", "sft.enabled=false", "eval.enabled=false", "data.synthetic.num_pairs=128", "+dpo.args.max_steps=3",
         "checkpoint.every_steps=0")


def test_a_finished_run_says_so_and_keeps_its_results(tmp_path):
    first = run_train(*SMALL, output_root=tmp_path)
    path = results_path(first)
    before = path.read_bytes()
    again = run_train(*SMALL, output_root=tmp_path)
    assert f"finished: {path.parent} is a finished run" in again.stdout and "resume.enabled=false" in again.stdout
    assert path.read_bytes() == before and results_path(again) == path  # untouched, and still named
    path.write_bytes(before[:100])  # cut short (a full disk, a copy interrupted): one line, the file kept as it is
    damaged = run_train(*SMALL, output_root=tmp_path, check=False)
    errors = [line for line in damaged.stderr.splitlines() if line.startswith("error:")]
    assert damaged.returncode == 2 and "Traceback" not in damaged.stderr, damaged.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith(f"error: {path} is damaged (") and \
        errors[0].endswith("): restore it or move it away")
    assert path.read_bytes() == before[:100]
    fresh = run_train(*SMALL, "resume.enabled=false", output_root=tmp_path)  # starting over is explicit
    assert "finished:" not in fresh.stdout and read_results(fresh)["dpo"]["steps"] == 3


def test_a_second_run_in_the_same_directory_stops_naming_the_first(tmp_path):
    run_dir = tmp_path / "runs" / "held"
    lock = run_dir / ".run.lock"
    assert hold_exclusive(lock) is None  # this test process plays the running first run
    try:
        proc = run_train(*SMALL, "name=held", output_root=tmp_path, check=False)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
        assert f"another run is using {run_dir} (pid {os.getpid()} on " in errors[0] and "Traceback" not in proc.stderr
        assert not (run_dir / "config.yaml").exists()  # nothing of the first run's was touched
    finally:
        release(lock)


def test_a_crashed_run_never_blocks_its_rerun(tmp_path):
    lock = tmp_path / "runs" / "crashed" / ".run.lock"
    code = f"from train.core.locks import hold_exclusive; hold_exclusive({str(lock)!r}); print('held', flush=True); import time; time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert json.loads(lock.read_text())["pid"] == holder.pid  # the dead holder's note is still there
    proc = run_train(*SMALL, "name=crashed", output_root=tmp_path)
    assert read_results(proc)["dpo"]["steps"] == 3


def test_a_policy_that_ends_identical_to_its_reference_is_pointed_out(tmp_path):
    """A learning rate too small to move a float32 weight (0 itself is refused at start): DPO changes nothing, and
    the run says so instead of reporting KL 0 silently."""
    proc = run_train("debug=fast", "sft.enabled=false", "+dpo.args.max_steps=2", "dpo.args.learning_rate=1e-30",
                     "eval.num_prompts=4", output_root=tmp_path)
    assert "warning: the policy ends identical to its reference (KL 0, identical samples)" in proc.stdout
    assert read_results(proc)["dpo"]["kl_to_reference"] == 0.0
