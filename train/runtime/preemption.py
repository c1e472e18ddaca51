"""Preemption: signals only set a flag; ranks agree at a step boundary, save, then requeue (issue 6).

SLURM sends SIGUSR2 (`--signal=USR2@<seconds>`, submitit's `signal_delay_s`) before a time limit or
preemption, and SIGTERM when it cancels. A handler that saved from inside the signal would race the
training step and the other ranks, so it only records the signal; the callback checks the flag after
every optimizer step, any rank's flag stops all of them, and the trainer saves a complete checkpoint
on the way out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from transformers import TrainerCallback

from train.runtime import faults
from train.runtime.distributed import any_rank_flagged

SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class PreemptionCallback(TrainerCallback):
    def __init__(self) -> None:
        self.flag_time: float | None = None  # when the first signal arrived
        self.stopped_at_step: int | None = None
        self.previous = {}

    def install(self) -> None:
        for sig in SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.flag_time is None:
            self.flag_time = time.monotonic()
            print(f"preemption: got {signal.Signals(signum).name}; saving at the next step boundary", flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        faults.maybe_die("die", state.global_step)
        faults.maybe_signal(state.global_step)
        if any_rank_flagged(self.flag_time is not None):
            self.stopped_at_step = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control


def requeue(callback: PreemptionCallback) -> str:
    """Put this job back in the queue; returns how. Main process only."""
    submitit_handler = callback.previous.get(signal.SIGUSR2)
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and callable(submitit_handler):
        # submitit's own mechanism: it re-pickles the job, calls `scontrol requeue` and exits.
        submitit_handler(signal.SIGUSR2, None)
        return "submitit"
    job = os.environ.get("SLURM_ARRAY_JOB_ID") and f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    job = job or os.environ.get("SLURM_JOB_ID")
    if job:
        subprocess.run(["scontrol", "requeue", job], check=True)
        return f"scontrol requeue {job}"
    return "not requeued (not a SLURM job): rerun the same command to resume"
