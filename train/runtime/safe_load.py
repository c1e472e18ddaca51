"""No checkpoint, cache or state file is unpickled with arbitrary-code loading.

A pickle runs whatever its `__reduce__` names when loaded, so one file planted in a checkpoint would run
code on the next automatic resume. transformers' Trainer already loads optimizer.pt, scheduler.pt and
rng_state*.pth with `weights_only=True`, but DeepSpeed 0.19 loads its model/optimizer state partitions with
`torch.load(..., weights_only=False)` (runtime/checkpoint_engine/torch_checkpoint_engine.py).
`TORCH_FORCE_WEIGHTS_ONLY_LOAD=1` overrides every call site's choice; torch 2.13 reads it at each
`torch.load` call (torch/serialization.py, `load`), so setting it at start covers libraries imported
before, and child processes inherit it.

The weights-only unpickler accepts tensors, containers and primitive types; allowlist() names the other
types the files this project reads back need, found by saving real checkpoints (the pipeline on 1 process
and on 2 with ZeRO-1, ZeRO-2, ZeRO-3 and ZeRO-3 offload; DeepSpeed's own engine on 2 processes with each
stage in bf16 and fp16) and loading each file with only these allowed (tests/test_safe_load.py repeats
that check for the pipeline's files):
  rng_state*.pth       numpy's MT19937 state inside transformers' RNG state: an ndarray of uint32
  *optim_states.pt     DeepSpeed ZeRO's optimizer state: its loss scaler (DynamicLossScaler with fp16), the
                       stage enum and (ZeRO-1/2) the fragment addresses of the flat parameter partitions
training_args.bin (the TrainingArguments object) is written by the Trainer but never read back, so
none of its types are allowed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

FORCE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
FORCE_OFF = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"  # torch refuses every load when both are set
NOT_READ_BACK = {"training_args.bin"}  # the Trainer saves it for people; nothing loads it on resume


def _named(obj) -> tuple[object, str]:
    # The (type, "module.name") form is a separate entry from a bare type: transformers' RNG loader adds the
    # numpy types bare in a `safe_globals` context and removes them on exit, which must not remove ours.
    return obj, f"{obj.__module__}.{obj.__qualname__}"


def allowlist(deepspeed: bool) -> list[tuple[object, str]]:
    """The types outside torch's defaults that the files a resume reads back need, each by its name."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy._core.multiarray._reconstruct (numpy 2)
    entries = [_named(reconstruct), _named(np.ndarray), _named(np.dtype),
               _named(type(np.dtype(np.uint32)))]  # rng_state*.pth; the last one is BUILD's target type
    if deepspeed:
        # deferred: imported only for DeepSpeed runs; importing deepspeed costs seconds and prints its
        # accelerator choice, and a run without it never reads these files.
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum  # deferred: as above
        from deepspeed.utils.tensor_fragment import fragment_address  # deferred: as above

        entries += [_named(LossScaler), _named(DynamicLossScaler), _named(ZeroStageEnum), _named(fragment_address)]
    return entries


def enforce_weights_only(deepspeed: bool = False) -> None:
    """Force weights-only unpickling for every torch.load in this process and its children, with
    allowlist()'s types allowed. Idempotent: call it wherever a training process starts."""
    os.environ.pop(FORCE_OFF, None)
    os.environ[FORCE] = "1"
    torch.serialization.add_safe_globals(allowlist(deepspeed))  # a set union: adding twice is adding once


def unsafe_globals(path: Path, deepspeed: bool) -> list[str] | None:
    """The globals a torch.save file `path` would need beyond the allowlist ([] when it loads safely),
    found by reading its pickle without running it; None if it is not a torch.save archive at all."""
    enforce_weights_only(deepspeed)
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except (ValueError, RuntimeError, OSError):  # not a zip archive, or one without data.pkl
        return None


def pickled_files(directory: Path) -> list[Path]:
    """The files under `directory` that a resume unpickles (torch.save archives), sorted."""
    return sorted(p for p in Path(directory).rglob("*")
                  if p.is_file() and p.suffix in (".pt", ".pth", ".bin") and p.name not in NOT_READ_BACK)
