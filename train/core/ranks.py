"""This process's place in a launch, read from the launcher's environment (accelerate, torchrun, SLURM
workers): valid before torch.distributed or accelerate start, so it works in config checks and file locks."""

from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def num_machines() -> int:
    # The launchers export both; one process per machine when run plainly.
    return max(world_size() // max(int(os.environ.get("LOCAL_WORLD_SIZE", world_size())), 1), 1)
