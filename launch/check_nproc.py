"""Refuse a process count the machine cannot hold, before any process starts (one line, exit 2)."""

import os
import sys

try:
    import torch
except ImportError:  # before `make setup` has installed it: count no GPUs
    torch = None


def main() -> None:
    nproc = int(sys.argv[1])
    gpus = torch.cuda.device_count() if torch is not None else 0
    if nproc < 1:
        sys.exit(f"error: NPROC={nproc}: must be >= 1")
    if gpus and nproc > gpus:
        sys.exit(f"error: NPROC={nproc} but this machine has {gpus} GPUs: use NPROC<={gpus} (or more nodes: make submit)")
    cores = len(os.sched_getaffinity(0))
    if not gpus and nproc > cores:
        sys.exit(f"error: NPROC={nproc} but this machine has no GPU and {cores} CPU cores: use NPROC<={cores}")


if __name__ == "__main__":
    main()
