"""Refuse a process count the machine cannot hold, or an accelerate config the run would refuse, before any
process starts (one line, exit 2): `make train NPROC=N [ACCELERATE_CONFIG=<file>]` runs it first.

    python launch/check_nproc.py NPROC [ACCELERATE_CONFIG]

Refused inside the processes instead, the same line would come once per process and then accelerate's own
traceback of the failed processes (train/runtime/launcher.py)."""

import os
import sys

from train.core.cli import fail
from train.core.errors import ConfigError
from train.runtime.launcher import launcher_problem, settings_from_config_file


def gpu_count() -> int:
    try:
        import torch  # deferred: seconds to import, and a count that is not a number needs none
    except ImportError:  # before `make setup` has installed it: count no GPUs
        return 0
    return torch.cuda.device_count()


def main() -> None:
    given = sys.argv[1] if len(sys.argv) > 1 else ""
    if not given.strip().isdigit():
        fail(f"NPROC={given}: give a whole number of processes, e.g. make train NPROC=2")
    nproc = int(given)
    if nproc < 1:
        fail(f"NPROC={nproc}: must be >= 1")
    gpus = gpu_count()
    if gpus and nproc > gpus:
        fail(f"NPROC={nproc} but this machine has {gpus} GPUs: use NPROC<={gpus} (or more nodes: make submit)")
    cores = len(os.sched_getaffinity(0))
    if not gpus and nproc > cores:
        fail(f"NPROC={nproc} but this machine has no GPU and {cores} CPU cores: use NPROC<={cores}")
    if len(sys.argv) > 2:
        check_accelerate_config(sys.argv[2], nproc)


def check_accelerate_config(path: str, nproc: int) -> None:
    try:
        problem = launcher_problem(settings_from_config_file(path, nproc))
    except ConfigError as err:
        fail(str(err))
    if problem:
        fail(f"ACCELERATE_CONFIG={path}: {problem}")


if __name__ == "__main__":
    main()
