"""What a run leaves in its directory besides its results: `run.log`, everything the main process printed, and
no empty directory after a refused start.

The log: stdout and stderr of rank 0 are teed from the start of the job, first into memory, and into
`<run dir>/run.log` only once the run takes its directory (`keep_log`, after every start check and the data
have passed): a refused start writes nothing, yet the log still holds the settings banner printed before the
data loaded. A resumed run appends, after a separator line.

The directory: Hydra creates hydra.run.dir before our code runs, so a start refused after the precheck (a
missing data.source file) or a dry run left an empty run directory. One that this process created (it was
absent when it started) and that is still empty at the end of the job is removed; nothing else ever is.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, TextIO

import psutil

from train.core.ranks import is_main_process

RUN_LOG = "run.log"


class RunLog:
    """One log shared by the tee streams: held in memory until `keep_in` names its file."""

    def __init__(self) -> None:
        self.pending: Optional[io.StringIO] = io.StringIO()
        self.file: Optional[TextIO] = None

    def write(self, text: str) -> None:
        if self.file is not None:
            self.file.write(text)
            self.file.flush()  # a killed run keeps its log up to its last line
        elif self.pending is not None:
            self.pending.write(text)

    def keep_in(self, path: Path) -> None:
        if self.file is not None or self.pending is None:
            return
        resumed = path.exists() and path.stat().st_size > 0
        self.file = path.open("a", encoding="utf-8")
        if resumed:
            self.file.write(f"\n===== run started again {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n")
        self.write(self.pending.getvalue())
        self.pending = None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.pending = self.file = None


class Tee:
    """Writes through to the console stream it replaces, and each finished line into the run log. A progress
    bar redraws its line with carriage returns: the log keeps what the line last showed."""

    def __init__(self, console: TextIO, log: RunLog) -> None:
        self.console, self.log, self.partial = console, log, ""

    def write(self, text: str) -> int:
        written = self.console.write(text)
        *lines, self.partial = (self.partial + text).split("\n")
        if lines:
            try:
                self.log.write("".join(line.split("\r")[-1] + "\n" for line in lines))
            except OSError:  # a full disk must not take the console (and the error line about it) down too
                self.log.close()
        return written

    def finish(self) -> None:
        """The last unfinished line (a bar left open), into the log."""
        if self.partial.split("\r")[-1].strip():
            self.write("\n")
        self.partial = ""

    def flush(self) -> None:
        self.console.flush()

    def __getattr__(self, name: str):  # isatty, fileno, encoding, buffer...: the console's
        return getattr(self.console, name)


_active: Optional[RunLog] = None


def keep_log(run_dir: Path) -> None:
    """The run has taken `run_dir`: from now on (and what was printed before) the log goes to run.log."""
    if _active is not None:
        _active.keep_in(run_dir / RUN_LOG)


@contextlib.contextmanager
def run_output(run_dir: Path) -> Iterator[None]:
    """Around one job (one run directory): tee the main process's output, and on the way out remove the run
    directory if this process created it and nothing was written into it."""
    global _active
    created_here = _created_by_this_process(run_dir)
    tee = is_main_process() and _active is None
    if tee:
        _active = RunLog()
        consoles = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = Tee(sys.stdout, _active), Tee(sys.stderr, _active)
        # Log handlers made before (Hydra's, transformers') hold the console streams themselves.
        moved = [(h, h.setStream(sys.stdout if h.stream is consoles[0] else sys.stderr)) for h in stream_handlers()
                 if h.stream in consoles]
    try:
        yield
    finally:
        if tee:
            for tee_stream in (sys.stdout, sys.stderr):
                tee_stream.finish()
                tee_stream.flush()
            for handler, stream in moved:
                handler.setStream(stream)
            sys.stdout, sys.stderr = consoles
            _active.close()
            _active = None
        if created_here:
            with contextlib.suppress(OSError):  # not empty (or gone): it is the run's
                run_dir.rmdir()


def stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger(), *(lg for lg in list(logging.root.manager.loggerDict.values())
                                      if isinstance(lg, logging.Logger))]
    handlers = {id(h): h for lg in loggers for h in lg.handlers if type(h) is logging.StreamHandler}
    return list(handlers.values())


def _created_by_this_process(run_dir: Path) -> bool:
    """Empty, and created after this process started: Hydra made it for this job (an older empty directory,
    made before, is left alone)."""
    try:
        empty = not any(run_dir.iterdir())
        return empty and run_dir.stat().st_ctime >= psutil.Process().create_time()
    except OSError:
        return False
