"""Checkpoints that count only when complete, and resuming from the newest complete one (issue 6).

The trainer writes `checkpoint-N/` (model, optimizer, scheduler, per-rank RNG states, trainer state with
the data position). A checkpoint is complete once every rank has written, a barrier has passed, the
main process has found every expected file and then written `COMPLETE` last; only complete
checkpoints are resumed from, and old ones are deleted only after a newer one is complete. transformers'
own rotation (save_total_limit) deletes before that point, so rotation is ours.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from train.core.errors import ConfigError
from train.core.files import is_complete, mark_complete
from train.runtime import faults

SIGNATURE = "run_signature.json"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(directory: Path) -> list[Path]:
    """checkpoint-N directories, oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT.match(p.name).group(1)))


def missing_files(checkpoint: Path, world_size: int, deepspeed: bool) -> list[str]:
    """Files a complete checkpoint of a `world_size`-process run must hold that `checkpoint` lacks."""
    missing = [name for name in ("trainer_state.json", "scheduler.pt") if not (checkpoint / name).exists()]
    if not any(checkpoint.glob("*.safetensors")):
        missing.append("model weights (*.safetensors)")
    rng_files = ["rng_state.pth"] if world_size == 1 else [f"rng_state_{r}.pth" for r in range(world_size)]
    missing += [name for name in rng_files if not (checkpoint / name).exists()]
    if deepspeed:
        step_dirs = list(checkpoint.glob("global_step*"))
        for rank in range(world_size):
            if not any(d.glob(f"*zero_pp_rank_{rank}_*optim_states.pt") for d in step_dirs):
                missing.append(f"global_step*/...zero_pp_rank_{rank}_...optim_states.pt")
    elif not (checkpoint / "optimizer.pt").exists():
        missing.append("optimizer.pt")
    return missing


class CompleteCheckpointCallback(TrainerCallback):
    """After the trainer saves on every rank: barrier, check, mark complete, then rotate."""

    def __init__(self, keep: int, signature: dict[str, Any], deepspeed: bool, accelerator) -> None:
        self.keep, self.signature, self.deepspeed, self.accelerator = keep, signature, deepspeed, accelerator

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.accelerator.wait_for_everyone()  # every rank has written its files
        faults.maybe_die("save", state.global_step)  # tests: a crash after the files, before the marker
        if self.accelerator.is_main_process:
            missing = missing_files(checkpoint, self.accelerator.num_processes, self.deepspeed)
            if missing:
                raise RuntimeError(f"checkpoint {checkpoint} is missing {', '.join(missing)}")
            (checkpoint / SIGNATURE).write_text(json.dumps(self.signature, indent=2))
            mark_complete(checkpoint)  # last: the checkpoint now counts
            complete = [c for c in checkpoints(checkpoint.parent) if is_complete(c)]
            for old in complete[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return control


def find_resume_checkpoint(directory: Path, signature: dict[str, Any], allow_changes: bool,
                           world_size: int, deepspeed: bool) -> Path | None:
    """Newest complete checkpoint, checked against this run; incomplete ones are reported and skipped."""
    candidates = checkpoints(directory)
    complete = [c for c in candidates if is_complete(c)]
    for c in candidates:
        if not is_complete(c) and (not complete or c.name != complete[-1].name):
            print(f"resume: ignoring incomplete checkpoint {c}", flush=True)
    if not complete:
        return None
    newest = complete[-1]
    saved = json.loads((newest / SIGNATURE).read_text())
    changed = {k: (saved.get(k), v) for k, v in signature.items() if saved.get(k) != v}
    if changed and not allow_changes:
        what = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
        raise ConfigError(f"cannot resume {newest}: {what}; restore the settings, or set resume.allow_changes=true")
    if not changed:
        missing = missing_files(newest, world_size, deepspeed)
        if missing:
            raise ConfigError(f"cannot resume {newest}: missing {', '.join(missing)}; delete it to fall back to an older checkpoint")
    return newest
