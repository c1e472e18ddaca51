"""Preemption: signals only set a flag; ranks agree at a step boundary, save, then requeue.

SLURM sends SIGUSR2 (`--signal=USR2@<seconds>`, submitit's `signal_delay_s`) before a time limit or
preemption, and SIGTERM when it preempts or cancels. A handler that saved from inside the signal would
race the training step and the other ranks, so it only records the signal; the callback checks the flag
after every optimizer step, any rank's flag stops all of them, and the trainer saves a complete
checkpoint on the way out.

Nothing on the way from the signal to the requeue may need a helper process. SLURM signals
every process of the job step, W&B's service process (`wandb-core`) included, and once it is gone every
W&B call raises `ConnectionResetError`. So the reporting callbacks (W&B's) fall silent when a signal
arrives, and `on_save` ends `trainer.train()` as soon as the checkpoint is complete, before the trainer's
train-end logging and callbacks: the pipeline requeues next and only then closes W&B, errors caught.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from functools import partialmethod

from transformers import TrainerCallback
from transformers.integrations import get_reporting_integration_callbacks

from train.runtime import faults
from train.runtime.distributed import any_rank_flagged

# Ctrl-C (SIGINT) too: the first one saves at the step boundary like SIGTERM; a second one stops at once.
SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)


class CheckpointedForPreemption(Exception):
    """Raised out of trainer.train() once the checkpoint of a preemption stop is complete on every rank."""


class PreemptionCallback(TrainerCallback):
    """Add it after CompleteCheckpointCallback: its `on_save` (the COMPLETE marker) must run first."""

    def __init__(self) -> None:
        self.flag_time: float | None = None  # when the first signal arrived
        self.stopped_at_step: int | None = None
        self.previous = {}

    @property
    def stopping(self) -> bool:
        """A signal arrived here, or at some rank: from now on nothing may touch a helper process."""
        return self.flag_time is not None or self.stopped_at_step is not None

    def install(self) -> None:
        for sig in SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def silence_reporters_on_signal(self, trainer) -> None:
        """Wrap the trainer's reporting callbacks (W&B's WandbCallback, any other report_to) so that they
        stop when a signal arrives. A new list, not in-place edits: the handler may be iterating the old one."""
        reporters = tuple(get_reporting_integration_callbacks(trainer.args.report_to))
        handler = trainer.callback_handler
        handler.callbacks = [SilentAfterSignal(c, self) if isinstance(c, reporters) else c for c in handler.callbacks]

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.flag_time is not None:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without the checkpoint
        if self.flag_time is None:
            self.flag_time = time.monotonic()
            if signum == signal.SIGINT:
                print("interrupted: Ctrl-C; saving a checkpoint at the next step boundary, then stopping "
                      "(press Ctrl-C again to stop at once, losing the steps since the last checkpoint)", flush=True)
            else:
                print(f"preemption: got {signal.Signals(signum).name}; saving at the next step boundary", flush=True)
            # W&B's console capture sends every printed line to its service; if the signal ended that too,
            # asyncio would warn "socket.send() raised exception." for each line from here on.
            logging.getLogger("asyncio").setLevel(logging.ERROR)

    def on_step_end(self, args, state, control, **kwargs):
        faults.maybe_die("die", state.global_step)
        faults.maybe_kill_helpers(state.global_step)
        faults.maybe_signal(state.global_step)
        if any_rank_flagged(self.flag_time is not None):
            self.stopped_at_step = state.global_step
            control.should_save = True
            control.should_training_stop = True
            control.should_evaluate = False  # the time left before the kill is for the checkpoint
        return control

    def on_save(self, args, state, control, **kwargs):
        if self.stopped_at_step == state.global_step:
            # Out of trainer.train() now: its train-end log and on_train_end would still call the reporters.
            raise CheckpointedForPreemption(f"checkpoint-{state.global_step}")
        return control


class SilentAfterSignal(TrainerCallback):
    """A reporting callback that runs until a preemption signal arrives, and never after: the signal may
    have ended its helper process. An error from a call the signal interrupted is dropped."""

    def __init__(self, reporter: TrainerCallback, preemption: PreemptionCallback) -> None:
        self.reporter, self.preemption = reporter, preemption

    def _call(self, event: str, args, state, control, **kwargs):
        if self.preemption.stopping:
            return None
        try:
            return getattr(self.reporter, event)(args, state, control, **kwargs)
        except Exception as err:
            if not self.preemption.stopping:
                raise
            print(f"preemption: dropped {type(self.reporter).__name__}.{event}, which the signal interrupted "
                  f"({type(err).__name__}: {err})", flush=True)
            return None


for _event in [name for name in vars(TrainerCallback) if name.startswith("on_")]:
    setattr(SilentAfterSignal, _event, partialmethod(SilentAfterSignal._call, _event))


def requeue(callback: PreemptionCallback) -> str:
    """Put this job back in the queue; returns how. Main process only."""
    submitit_handler = callback.previous.get(signal.SIGUSR2)
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and callable(submitit_handler):
        # submitit's own mechanism: it re-pickles the job, calls `scontrol requeue` and exits (SystemExit).
        submitit_handler(signal.SIGUSR2, None)
        return "submitit"
    job = os.environ.get("SLURM_ARRAY_JOB_ID") and f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    job = job or os.environ.get("SLURM_JOB_ID")
    if job:
        subprocess.run(["scontrol", "requeue", job], check=True)
        return f"scontrol requeue {job}"
    return "not requeued (not a SLURM job): rerun the same command to resume"
