"""Refuse a process count the machine cannot hold, before any process starts (one line, exit 2)."""

import os
import sys

from train.core.cli import fail

try:
    import torch
except ImportError:  # before `make setup` has installed it: count no GPUs
    torch = None


def main() -> None:
    given = sys.argv[1] if len(sys.argv) > 1 else ""
    if not given.strip().isdigit():
        fail(f"NPROC={given}: give a whole number of processes, e.g. make train NPROC=2")
    nproc = int(given)
    gpus = torch.cuda.device_count() if torch is not None else 0
    if nproc < 1:
        fail(f"NPROC={nproc}: must be >= 1")
    if gpus and nproc > gpus:
        fail(f"NPROC={nproc} but this machine has {gpus} GPUs: use NPROC<={gpus} (or more nodes: make submit)")
    cores = len(os.sched_getaffinity(0))
    if not gpus and nproc > cores:
        fail(f"NPROC={nproc} but this machine has no GPU and {cores} CPU cores: use NPROC<={cores}")


if __name__ == "__main__":
    main()
