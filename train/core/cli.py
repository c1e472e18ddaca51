"""What the entry points share: one `error:` line and exit code 2 for anything the user can fix."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, NoReturn

from train.core.errors import ConfigError, Preempted, TrainingAborted
from train.core.ranks import is_main_process
from train.core.storage import storage_problem

EXIT_USAGE = 2  # a bad config, data or environment: nothing was trained
EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped early by a signal after a complete checkpoint; rerun to resume
EXIT_INTERRUPTED = 130  # 128 + SIGINT: stopped at once by a second Ctrl-C
# How long a process other than rank 0 waits, after a refusal every process finds, for the launcher to stop it.
OTHERS_WAIT_S = 30


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def fail_on_main_process(message: str) -> NoReturn:
    """A refusal every process of a launch finds alike (the same config): rank 0 prints it once and exits 2.
    The others exit 2 silently, but only after waiting for the launcher to stop them once rank 0 has exited:
    exiting first, one could get rank 0 stopped (SIGTERM) before its line is out."""
    if is_main_process():
        fail(message)
    time.sleep(OTHERS_WAIT_S)
    sys.exit(EXIT_USAGE)


@contextmanager
def exit_codes(output_root: str, before_error_line: Callable[[], None]) -> Iterator[None]:
    """What a training run's end means to the shell: a refusal or an aborted run is one `error:` line and exit 2;
    a stop (signal, preemption) exits EXIT_STOPPED, or 0 once the scheduler has requeued the job; a full or
    read-only disk under `output_root` is the user's to fix: one line, not a traceback. `before_error_line`
    closes what could be mid-line (progress bars), so the error line starts a line of its own."""
    try:
        yield
    except (ConfigError, TrainingAborted) as err:
        before_error_line()
        fail(str(err))
    except Preempted as stop:
        print(f"stopped: {stop}", flush=True)
        # Rerun to resume; 0 once the scheduler has requeued the job.
        sys.exit(0 if stop.requeued else EXIT_STOPPED)
    except Exception as err:
        problem = storage_problem(err, Path(output_root))
        if problem is None:
            raise
        before_error_line()
        fail(f"{problem}; free some space or set output_root=<a writable directory> (complete files were kept)")
