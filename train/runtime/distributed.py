"""Process-group setup and per-rank figures for multi-process runs.

Workaround (CPU only): transformers' TrainingArguments resets accelerate's PartialState and, on a machine
with no GPU, rebuilds it without a backend, so accelerate believes num_processes == 1 while
torch.distributed has N ranks (DeepSpeed then fails with "train_batch_size is not equal to
micro_batch_per_gpu * gradient_acc_step * world_size", gloo with "allgather: invalid output tensor list";
seen with transformers 5.24, accelerate 1.15, DeepSpeed 0.19.8). We build the PartialState ourselves with
backend="gloo" first and tell TrainingArguments to keep it (accelerator_config.use_configured_state). On
GPU machines this is a no-op: transformers' own setup (nccl) is right there.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from accelerate import PartialState

from train import seams
from train.core.ranks import world_size


def needs_cpu_gloo_workaround() -> bool:
    return world_size() > 1 and not torch.cuda.is_available()


def setup_process_group(use_deepspeed: bool, timeout_s: int) -> dict[str, Any]:
    """Start the process group if the workaround applies; returns the TrainingArguments kwargs that keep it
    (the trainer-config builders' `extra`)."""
    if use_deepspeed and "WORLD_SIZE" not in os.environ:
        # DeepSpeed needs a process group even for one process (ZeRO-Offload on one GPU): what `accelerate
        # launch` would export. Without it: "Default process group has not been initialized" at the first step.
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    if not needs_cpu_gloo_workaround():
        return {}
    # Building any TrainingArguments (validation does) already created a backend-less state: start over.
    seams.reset_accelerate_state()
    timeout = timedelta(seconds=timeout_s)
    if use_deepspeed:
        # accelerate picks DistributedType.DEEPSPEED from this variable, as `accelerate launch --use_deepspeed` would.
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend="gloo", timeout=timeout)
    else:
        # cpu=True makes it MULTI_CPU: without it the state says NO, and the Trainer would skip DDP's
        # gradient all-reduce (every rank training on its own) while still sharding the data.
        PartialState(cpu=True, backend="gloo", timeout=timeout)
    return {"accelerator_config": {"use_configured_state": True}, "ddp_backend": "gloo"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_numel(model) -> int:
    """Parameter elements this rank actually holds: a ZeRO-3 parameter keeps only its partition (ds_tensor)."""
    if model is None:
        return 0
    total = 0
    for p in model.parameters():
        total += p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
    return total


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def gather_rank_figures(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's figures, on every rank (rank order)."""
    if not is_distributed():
        return [figures]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, figures)
    return out


def barrier() -> None:
    """Every rank waits here for the others (no-op in one process): files one rank wrote are then on disk for all."""
    if is_distributed():
        dist.barrier()


def any_rank_flagged(flag: bool) -> bool:
    """True on every rank if any rank passes True (all ranks must call it)."""
    if not is_distributed():
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())
