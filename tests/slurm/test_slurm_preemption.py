"""SIGTERM to every process of a job, W&B's service process included: the run saves a complete
checkpoint, requeues (or exits 75 outside SLURM) without a traceback, and the next run resumes and finishes.

A preempting scheduler signals the job's tasks, every process of every step (SLURM's GraceTime: "the job's
tasks are immediately sent SIGCONT and SIGTERM"); that is `scancel --signal=TERM <job>`. Not `--full`: it
also signals the batch step's own children, srun among them, and srun answers SIGTERM by killing its step
("srun: forcing job termination", checked on Slurm 22.05), so no job launched through srun could save;
SLURM sends that only as the final kill, after the grace time.
"""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from helpers.runs import REPO, read_results, run_train

from helpers.slurm_fixture import dpo_steps_logged

# Short DPO from the base tiny model (no SFT), every step logged, checkpoints every 4 steps.
SHORT = ("debug=fast", "sft.enabled=false", "eval.enabled=false", "data.synthetic.num_pairs=256", "+dpo.args.max_steps=8",
         "dpo.args.logging_steps=1", "dpo.args.warmup_steps=0", "checkpoint.every_steps=4")
NOT_CLEAN = ("Traceback", "Exception ignored", "ConnectionResetError", "socket.send() raised")
CLOSING = "wandb: could not close the run"  # our one line about W&B, which names the error


def unclean(output: str) -> list[str]:
    return [line for line in output.splitlines() if any(s in line for s in NOT_CLEAN) and not line.startswith(CLOSING)]


def wandb_run_ids(run_dir: Path) -> set[str]:
    return {p.name.rsplit("-", 1)[1] for p in (run_dir / "wandb").glob("offline-run-*")}


def test_reporters_fall_silent_once_a_signal_arrives():
    from transformers import TrainerCallback

    from train.runtime.preemption import PreemptionCallback, SilentAfterSignal

    preemption = PreemptionCallback()

    class Reporter(TrainerCallback):  # W&B's WandbCallback, whose service process the signal may end
        calls = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.calls.append(logs)
            if logs == "signal now":
                preemption.flag_time = 0.0  # the signal arrives during the call ...
            if logs in ("lost", "signal now"):
                raise ConnectionResetError("Connection lost")  # ... and takes the service with it

    silent = SilentAfterSignal(Reporter(), preemption)
    silent.on_log(None, None, None, logs="step 1")
    with pytest.raises(ConnectionResetError):  # no signal: a W&B failure is not hidden
        silent.on_log(None, None, None, logs="lost")
    assert silent.on_log(None, None, None, logs="signal now") is None  # interrupted by the signal: dropped
    silent.on_log(None, None, None, logs="after")  # not called at all any more
    silent.on_train_end(None, None, None)
    assert Reporter.calls == ["step 1", "lost", "signal now"]


@pytest.mark.slow
def test_sigterm_that_also_ends_wandb_saves_exits_75_and_resumes(tmp_path):
    # wandbkill: W&B's service processes get SIGTERM and are gone before training goes on, as under
    # `scancel --signal=TERM`; then this process gets its own SIGTERM at the same step.
    stopped = run_train(*SHORT, output_root=tmp_path, check=False, env={"DPO_FAULT_INJECT": "wandbkill:4,sigterm:4"},
                       wandb=True)
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == 75, output[-3000:]
    assert "fault injection: wandbkill at step 4: ended wandb-core" in stopped.stdout  # W&B's service was gone
    assert not unclean(output), output[-3000:]
    assert "preempted: checkpoint at step 4 complete" in stopped.stdout
    (closing,) = [line for line in stopped.stdout.splitlines() if line.startswith(CLOSING)]
    assert "`wandb sync " in closing
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert (run_dir / "dpo" / "checkpoint-4" / "COMPLETE").exists()
    assert [json.loads(line)["step"] for line in (run_dir / "preemptions.jsonl").read_text().splitlines()] == [4]

    resumed = read_results(run_train(*SHORT, output_root=tmp_path, wandb=True))
    assert resumed["dpo"]["resumed_from"].endswith("checkpoint-4") and resumed["dpo"]["steps"] == 8
    assert [e["step"] for e in resumed["dpo"]["history"]][-4:] == [5, 6, 7, 8]
    assert wandb_run_ids(run_dir) == {resumed["wandb"]["run_id"]}  # the same W&B run, continued


@pytest.mark.slurm
def test_sigterm_to_every_process_of_a_slurm_job_requeues_and_resumes(slurm_cluster, tmp_path):
    """`make submit` with W&B offline; `scancel --signal=TERM` mid-DPO reaches the training process and W&B's
    service alike. The job must be requeued (not recorded COMPLETED after the first stop), resume from the
    stop's checkpoint and finish with results.json."""
    steps = 16
    overrides = ("debug=fast", "sft.enabled=false", "eval.enabled=false", f"+dpo.args.max_steps={steps}",
                 "dpo.args.logging_steps=1", "checkpoint.every_steps=100", "dpo.args.per_device_train_batch_size=32",
                 "data.synthetic.num_pairs=640", f"output_root={tmp_path}")
    jobs = tmp_path / "jobs" / "default"
    submit = subprocess.Popen(
        [str(REPO / ".venv/bin/python"), "-m", "launch.submit", "--wait", "--", *overrides], cwd=REPO,
        env={**os.environ, "WANDB_MODE": "offline"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job_id = None
    try:
        deadline = time.monotonic() + 240
        while dpo_steps_logged(jobs) < 4:
            assert time.monotonic() < deadline and submit.poll() is None, "DPO never started"
            time.sleep(0.2)
        (job_id,) = [p.name for p in jobs.glob(".submitit/*") if p.is_dir()]
        subprocess.run(["scancel", "--signal=TERM", job_id], check=True, timeout=10)
        seen = []  # (JobState, Restarts) while the job lives; its record is gone MinJobAge (10 s) after it ends
        deadline = time.monotonic() + 400
        while submit.poll() is None:
            assert time.monotonic() < deadline, f"job {job_id} did not finish; seen {seen[-5:]}"
            seen.append(_job_state(job_id))
            time.sleep(0.5)
        out = submit.stdout.read()
    finally:  # never leave the job or the waiting submitter behind for the next test
        if submit.poll() is None:
            submit.kill()
        if job_id:
            subprocess.run(["scancel", job_id], timeout=10)
    logs = "".join(p.read_text(errors="replace") for p in sorted(jobs.glob(".submitit/*/*_log.*")))
    assert submit.returncode == 0, out[-3000:] + logs[-3000:]
    assert ("COMPLETED", 0) not in seen, seen  # the silent stop a preempted run once made: finished at the first stop
    assert max(r or 0 for _, r in seen) >= 1, seen  # SLURM's own record: the job was requeued
    assert "got SIGTERM" in logs and "Requeued job" in logs  # submitit's own requeue, after our checkpoint
    assert not unclean(logs), logs[-3000:]
    (run_dir,) = [p for p in jobs.iterdir() if p.is_dir() and not p.name.startswith(".")]
    results = json.loads((run_dir / "results.json").read_text())
    (stop,) = [json.loads(line) for line in (run_dir / "preemptions.jsonl").read_text().splitlines()]
    assert results["dpo"]["resumed_from"].endswith(f"checkpoint-{stop['step']}") and 4 <= stop["step"] < steps
    assert results["dpo"]["steps"] == steps
    assert wandb_run_ids(run_dir) == {results["wandb"]["run_id"]}  # one W&B run, continued after the requeue


def _job_state(job_id: str) -> tuple:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=10).stdout
    state, restarts = re.search(r"JobState=(\S+)", out), re.search(r"Restarts=(\d+)", out)
    return (state.group(1) if state else None, int(restarts.group(1)) if restarts else None)
