"""What the entry points share: one `error:` line and exit code 2 for anything the user can fix."""

from __future__ import annotations

import sys
from typing import NoReturn

EXIT_USAGE = 2  # a bad config, data or environment: nothing was trained
EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped early by a signal after a complete checkpoint; rerun to resume
EXIT_INTERRUPTED = 130  # 128 + SIGINT: stopped at once by a second Ctrl-C


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)
