"""Trust nothing on disk: checkpoints carry a manifest that resume verifies, and no file a resume
reads back is unpickled with arbitrary-code loading.

The planted files are real pickles whose `__reduce__` runs `touch <marker>`: the marker appearing means
code ran. A planted file with the manifest left alone is damage (fall back); with the manifest rewritten to
match (an attacker who can write the checkpoint can write that too) the run refuses in one line.
"""

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.runs import REPO, assert_same_run, read_results, run_train
from train.core.manifest import MANIFEST, manifest_problem, write_manifest
from train.runtime.safe_load import FORCE, FORCE_OFF, enforce_weights_only, pickled_files, unsafe_globals

# DPO from the base tiny model, every step logged, a checkpoint every 4 steps; 12 steps in one process.
BASE = ("debug=fast", "sft.enabled=false", "eval.enabled=false", "dpo.args.logging_steps=1",
        "dpo.args.warmup_steps=0", "checkpoint.every_steps=4")
SHORT = (*BASE, "+dpo.args.max_steps=12")


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(path: Path, marker: Path, zip_archive: bool = True) -> None:
    """Replace `path` with a payload: a torch.save archive (what every loader expects) or a bare pickle."""
    if zip_archive:
        torch.save({"state": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))


def losses(results: dict) -> list[float]:
    return [e["loss"] for e in results["dpo"]["history"]]


def error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


# ---------------------------------------------------------------- fast: no training


def test_manifest_names_each_kind_of_damage(tmp_path):
    ckpt = tmp_path / "checkpoint-4"
    (ckpt / "global_step4").mkdir(parents=True)
    (ckpt / "optimizer.pt").write_bytes(bytes(range(256)) * 5000)  # > 1 MiB: hashed in several blocks
    (ckpt / "global_step4" / "states.pt").write_bytes(b"abc")
    assert manifest_problem(ckpt) == f"no {MANIFEST}"
    write_manifest(ckpt)
    (ckpt / "COMPLETE").write_text("")
    assert manifest_problem(ckpt) is None

    data = bytearray((ckpt / "optimizer.pt").read_bytes())
    data[1_100_000] ^= 0xFF  # same size, second block
    (ckpt / "optimizer.pt").write_bytes(bytes(data))
    assert manifest_problem(ckpt) == "optimizer.pt: sha256 mismatch"
    data[1_100_000] ^= 0xFF
    (ckpt / "optimizer.pt").write_bytes(bytes(data[:1000]))
    assert manifest_problem(ckpt) == "optimizer.pt: size 1000 != 1280000"
    (ckpt / "optimizer.pt").write_bytes(bytes(data))
    (ckpt / "global_step4" / "extra_optim_states.pt").write_bytes(b"x")
    assert manifest_problem(ckpt) == "global_step4/extra_optim_states.pt: not in the manifest"
    (ckpt / "global_step4" / "extra_optim_states.pt").unlink()
    (ckpt / "global_step4" / "states.pt").unlink()
    assert manifest_problem(ckpt) == "global_step4/states.pt: missing"


def test_forced_weights_only_stops_deepspeeds_own_load(tmp_path, monkeypatch):
    """DeepSpeed loads its partitions with weights_only=False: the payload runs, unless the policy is on.
    A user's TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD does not turn it off."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    monkeypatch.setenv(FORCE, "0")  # restored (removed) after the test: enforce_weights_only sets it
    monkeypatch.setenv(FORCE_OFF, "1")
    marker, path = tmp_path / "ran", tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    plant(path, marker)
    TorchCheckpointEngine().load(str(path), map_location="cpu")
    assert marker.exists(), "the payload should run without the policy (else this test proves nothing)"
    marker.unlink()

    enforce_weights_only(deepspeed=True)
    enforce_weights_only(deepspeed=True)  # idempotent
    with pytest.raises(pickle.UnpicklingError):
        TorchCheckpointEngine().load(str(path), map_location="cpu")
    assert not marker.exists()
    assert unsafe_globals(path, deepspeed=True) == ["posix.system"]  # named without running it


# ---------------------------------------------------------------- one process: resume, fallback, refusal


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 12-step run, and one stopped after its checkpoint at step 8 (4 and 8 complete)."""
    root = tmp_path_factory.mktemp("safe_load")
    straight = read_results(run_train(*SHORT, f"hydra.run.dir={root / 'straight'}", output_root=root))
    stopped = run_train(*SHORT, f"hydra.run.dir={root / 'base'}", output_root=root, check=False,
                        env={"DPO_FAULT_INJECT": "sigterm:8"})
    assert stopped.returncode == 75, stopped.stderr[-2000:]
    return root, straight


def copy_of_stopped_run(runs, name: str) -> Path:
    root, _ = runs
    shutil.copytree(root / "base", root / name)
    return root / name


def rerun(runs, run_dir: Path, **kwargs):
    root, _ = runs
    # checkpoint.keep_at_end=all: the finished run's checkpoints stay, to look at
    return run_train(*SHORT, f"hydra.run.dir={run_dir}", "checkpoint.keep_at_end=all", output_root=root, check=False,
                     **kwargs)


def resume_lines(proc) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.startswith("resume: checkpoint-")]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_checkpoint_falls_back_and_matches_an_uninterrupted_run(runs, damage):
    run_dir = copy_of_stopped_run(runs, damage)
    ckpt = run_dir / "dpo" / "checkpoint-8"
    if damage == "flip":  # in place, same size: only the hash can tell
        path = ckpt / "optimizer.pt"
        data = bytearray(path.read_bytes())
        data[len(data) // 2: len(data) // 2 + 8] = bytes(b ^ 0xA5 for b in data[len(data) // 2: len(data) // 2 + 8])
        path.write_bytes(bytes(data))
        why = "optimizer.pt: sha256 mismatch"
    else:  # a library loader would die on this in a traceback, on every rerun
        path = ckpt / "model.safetensors"
        size = path.stat().st_size
        os.truncate(path, size // 2)
        why = f"model.safetensors: size {size // 2} != {size}"
    proc = rerun(runs, run_dir)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert resume_lines(proc) == [f"resume: checkpoint-8 is damaged ({why}); falling back to checkpoint-4"]
    results = read_results(proc)
    assert results["dpo"]["resumed_from"].endswith("checkpoint-4")
    assert [e["step"] for e in results["dpo"]["history"]] == list(range(1, 13))
    assert_same_run(losses(results), losses(runs[1]))  # as an uninterrupted run
    assert (run_dir / "dpo" / "checkpoint-8.damaged").is_dir()  # kept aside to inspect
    assert manifest_problem(run_dir / "dpo" / "checkpoint-12") is None  # and the new ones verify


def test_no_undamaged_checkpoint_left_starts_over_saying_so(runs):
    """checkpoint-8 holds a planted payload (manifest untouched: damage), checkpoint-4 a flipped byte."""
    run_dir = copy_of_stopped_run(runs, "none_left")
    marker = run_dir.parent / "none_left.ran"
    plant(run_dir / "dpo" / "checkpoint-8" / "rng_state.pth", marker)
    path = run_dir / "dpo" / "checkpoint-4" / "scheduler.pt"
    data = bytearray(path.read_bytes())
    data[-30] ^= 0x01
    path.write_bytes(bytes(data))
    proc = rerun(runs, run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = resume_lines(proc)
    assert len(lines) == 2
    assert lines[0].startswith("resume: checkpoint-8 is damaged (rng_state.pth: size ")
    assert lines[0].endswith("; falling back to checkpoint-4")
    assert lines[1] == ("resume: checkpoint-4 is damaged (scheduler.pt: sha256 mismatch); "
                        "no complete checkpoint left: starting over")
    results = read_results(proc)
    assert results["dpo"]["resumed_from"] is None
    assert_same_run(losses(results), losses(runs[1]))
    assert not marker.exists()


@pytest.mark.parametrize("name, zip_archive", [("optimizer.pt", True), ("scheduler.pt", False),
                                               ("rng_state.pth", True)])
def test_planted_pickle_with_a_matching_manifest_is_refused_without_running_it(runs, name, zip_archive):
    run_dir = copy_of_stopped_run(runs, f"planted_{name}")
    marker = run_dir.parent / f"{name}.ran"
    ckpt = run_dir / "dpo" / "checkpoint-8"
    plant(ckpt / name, marker, zip_archive)
    write_manifest(ckpt)  # the attacker rewrites the manifest too
    proc = rerun(runs, run_dir)
    assert not marker.exists()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = error_lines(proc)
    assert f"cannot resume {ckpt}: {name} " in line and "delete checkpoint-8" in line
    assert ("posix.system" in line) if zip_archive else ("not a torch.save zip archive" in line)


# ---------------------------------------------------------------- two processes, ZeRO-2


@pytest.mark.multiproc
def test_zero2_resume_loads_weights_only_and_refuses_planted_deepspeed_states(tmp_path):
    """ZeRO-2 on 2 processes: every file of a real checkpoint loads weights-only with the allowlist, the
    resumed run equals an uninterrupted one, and a payload in DeepSpeed's model or optimizer states (the
    files DeepSpeed itself loads with weights_only=False) is refused naming the file, never run."""
    common = (*BASE, "+dpo.args.max_steps=8", "deepspeed=zero2")
    straight = read_results(run_train(*common, f"hydra.run.dir={tmp_path / 'straight'}", output_root=tmp_path, nproc=2))
    stopped = run_train(*common, f"hydra.run.dir={tmp_path / 'base'}", output_root=tmp_path, nproc=2, check=False,
                        env={"DPO_FAULT_INJECT": "sigterm:4"})
    assert "preempted: checkpoint at step 4 complete" in stopped.stdout, stopped.stderr[-3000:]
    ckpt = tmp_path / "base" / "dpo" / "checkpoint-4"
    files = pickled_files(ckpt)
    names = {p.name for p in files}
    assert {"rng_state_0.pth", "rng_state_1.pth", "scheduler.pt", "mp_rank_00_model_states.pt"} <= names
    assert all(unsafe_globals(p, deepspeed=True) == [] for p in files)
    load_all = ("import sys, torch; from train.runtime.safe_load import enforce_weights_only; enforce_weights_only(True); "
                "[torch.load(p, map_location='cpu', weights_only=False) for p in sys.argv[1:]]")
    subprocess.run([sys.executable, "-c", load_all, *map(str, files)], cwd=REPO, check=True, capture_output=True)

    for rel in ("global_step4/zero_pp_rank_1_mp_rank_00_optim_states.pt", "global_step4/mp_rank_00_model_states.pt"):
        run_dir = tmp_path / rel.replace("/", "_")
        shutil.copytree(tmp_path / "base", run_dir)
        marker = tmp_path / f"{run_dir.name}.ran"
        plant(run_dir / "dpo" / "checkpoint-4" / rel, marker)
        write_manifest(run_dir / "dpo" / "checkpoint-4")
        refused = run_train(*common, f"hydra.run.dir={run_dir}", output_root=tmp_path, nproc=2, check=False)
        assert refused.returncode != 0 and not marker.exists()
        assert any(f"checkpoint-4: {rel} needs types outside the weights-only allowlist (posix.system)" in line
                   for line in error_lines(refused)), refused.stderr[-3000:]

    resumed = read_results(run_train(*common, f"hydra.run.dir={tmp_path / 'base'}", output_root=tmp_path, nproc=2))
    assert resumed["dpo"]["resumed_from"].endswith("checkpoint-4")
    assert_same_run(losses(resumed), losses(straight))
