"""Checkpoints that count only when complete, and resuming from the newest complete one: DPO's in
the run directory, SFT's in its work directory.

The trainer writes `checkpoint-N/` (model, optimizer, scheduler, per-rank RNG states, trainer state with
the data position). A checkpoint is complete once every rank has written, a barrier has passed, the
main process has found every expected file and then written `COMPLETE` last; only complete
checkpoints are resumed from, and old ones are deleted only after a newer one is complete. transformers'
own rotation (save_total_limit) deletes before that point, so rotation is ours.

Before COMPLETE the main process also writes a manifest (every file's size and sha256). Resume
takes the newest complete checkpoint whose files still match it: one changed in place, truncated, added
or removed after the save is set aside as `<name>.damaged` with one line naming the file, and the previous
complete checkpoint is used (or training starts over, saying so). The chosen checkpoint's pickled files
must load weights-only (train/runtime/safe_load.py), or the run stops in one line naming the file.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from transformers import TrainerCallback

from train.config.choices import KeepAtEnd
from train.core.errors import ConfigError
from train.core.files import is_complete, mark_complete
from train.core.manifest import manifest_problem, write_manifest
from train.runtime import faults
from train.runtime.safe_load import pickled_files, unsafe_globals

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
            write_manifest(checkpoint)  # after every other file, before the marker: it covers them all
            mark_complete(checkpoint)  # last: the checkpoint now counts
            complete = [c for c in checkpoints(checkpoint.parent) if is_complete(c)]
            for old in complete[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return control


class NoCheckpointAtEnd(TrainerCallback):
    """Drops the checkpoint transformers saves at the last step (save_strategy="steps" always saves there) for
    a stage whose final model is saved right after (SFT): a 7B model's optimizer states, tens of GB, would be
    written only to be deleted. Add it before PreemptionCallback: a signal at the last step still saves."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = False
        return control


def remove_checkpoints(directory: Path) -> None:
    """checkpoint-N (and set-aside checkpoint-N.damaged) directories of a finished stage, before its output
    is published: the shared SFT model is the model alone."""
    for path in directory.iterdir() if directory.is_dir() else []:
        if path.is_dir() and CHECKPOINT.match(path.name.removesuffix(".damaged")):
            shutil.rmtree(path, ignore_errors=True)


def prune_at_end(directory: Path, policy_dir: Path, keep: KeepAtEnd) -> list[Path]:
    """A finished run's checkpoints in `directory` down to what checkpoint.keep_at_end keeps, only once the final
    policy is complete (its COMPLETE marker, written after its files); returns the removed ones."""
    if keep == KeepAtEnd.all or not is_complete(policy_dir):
        return []
    complete = [c for c in checkpoints(directory) if is_complete(c)]
    kept = complete[-1:] if keep == KeepAtEnd.last else []
    removed = [p for p in (directory.iterdir() if directory.is_dir() else [])
               if p.is_dir() and CHECKPOINT.match(p.name.removesuffix(".damaged")) and p not in kept]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def find_resume_checkpoint(directory: Path, signature: dict[str, Any], allow_changes: bool,
                           world_size: int, deepspeed: bool) -> Path | None:
    """Newest complete, undamaged checkpoint, checked against this run. The main process decides (hashing a
    checkpoint once, printing each line once) and tells the other ranks, which all raise its refusal."""
    state = PartialState()
    decision: list = [None]
    error: Exception | None = None
    if state.is_main_process:
        try:
            found = choose_checkpoint(directory, signature, allow_changes, world_size, deepspeed)
            decision = [("resume", str(found) if found else None)]
        except ConfigError as err:
            decision = [("refuse", str(err))]
        except Exception as err:  # still tell the others: they would wait in the broadcast until the timeout
            decision, error = [("fail", f"{type(err).__name__}: {err}")], err
    if state.num_processes > 1:
        broadcast_object_list(decision)
    if error is not None:
        raise error
    kind, value = decision[0]
    if kind == "refuse":
        raise ConfigError(value)
    if kind == "fail":
        raise RuntimeError(f"the main process failed while choosing a checkpoint: {value}")
    return Path(value) if value else None


def choose_checkpoint(directory: Path, signature: dict[str, Any], allow_changes: bool,
                      world_size: int, deepspeed: bool) -> Path | None:
    candidates = checkpoints(directory)
    complete = [c for c in candidates if is_complete(c)]
    for c in candidates:
        if not is_complete(c) and (not complete or c.name != complete[-1].name):
            print(f"resume: ignoring incomplete checkpoint {c}", flush=True)
    newest = newest_undamaged(complete)
    if newest is None:
        return None
    saved = json.loads((newest / SIGNATURE).read_text())
    changed = {k: (saved.get(k), v) for k, v in signature.items() if saved.get(k) != v}
    if changed and not allow_changes:
        what = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
        raise ConfigError(f"cannot resume {newest}: {what}; restore the settings, or set resume.allow_changes=true")
    if not changed:
        missing = missing_files(newest, world_size, deepspeed)
        if missing:
            raise ConfigError(f"cannot resume {newest}: missing {', '.join(missing)}; delete it to fall back to an older checkpoint")
    check_weights_only(newest, deepspeed)
    return newest


def newest_undamaged(complete: list[Path]) -> Path | None:
    """The newest of `complete` whose manifest verifies. Damaged ones are renamed `<name>.damaged` (kept
    to inspect, out of the way of the checkpoint that training writes again under that name)."""
    for i in range(len(complete) - 1, -1, -1):
        problem = manifest_problem(complete[i])
        if problem is None:
            return complete[i]
        then = f"falling back to {complete[i - 1].name}" if i else "no complete checkpoint left: starting over"
        print(f"resume: {complete[i].name} is damaged ({problem}); {then}", flush=True)
        aside = complete[i].with_name(f"{complete[i].name}.damaged")
        shutil.rmtree(aside, ignore_errors=True)  # an older damaged copy of the same step
        complete[i].rename(aside)
    return None


def check_weights_only(checkpoint: Path, deepspeed: bool) -> None:
    """Refuse a checkpoint with a pickled file that would need more than weights-only loading. Its manifest
    verified, so it was written that way (by hand, or by a library newer than the allowlist): say which."""
    for path in pickled_files(checkpoint):
        unsafe = unsafe_globals(path, deepspeed)
        if unsafe != []:
            why = (f"needs types outside the weights-only allowlist ({', '.join(unsafe)})" if unsafe
                   else "is not a torch.save zip archive, the only format resumed")
            raise ConfigError(f"cannot resume {checkpoint}: {path.relative_to(checkpoint)} {why}; it is not "
                              f"loaded (train/runtime/safe_load.py lists the allowed types); delete "
                              f"{checkpoint.name} to fall back to an older checkpoint")
