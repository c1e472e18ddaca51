"""What the entry points share: one `error:` line and exit code 2 for anything the user can fix."""

from __future__ import annotations

import sys
import time
from typing import NoReturn

from train.core.ranks import is_main_process

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
