"""SFT checkpoints: a signal during SFT saves a complete SFT checkpoint, the run exits 75 (outside
SLURM), and the rerun resumes SFT exactly, finishes it and DPO; a damaged SFT checkpoint falls back to the
previous one. The fault injector's `@sft` items (DPO_FAULT_INJECT=sigterm:6@sft) act at SFT's steps; here
SFT has 8."""

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file
from transformers import TrainerControl, TrainerState

from helpers.runs import assert_same_run, read_results, run_train
from train.config.compose import compose
from train.config.choices import Stage
from helpers.trainer_config import trl_config
from train.trainer.checkpoint import NoCheckpointAtEnd, remove_checkpoints

# 8 SFT steps, each logged, a checkpoint every 4; 2 DPO steps so the rerun also finishes DPO.
SHORT = ("debug=fast", "+sft.args.max_steps=8", "sft.args.logging_steps=1", "checkpoint.every_steps=4",
         "eval.enabled=false", "+dpo.args.max_steps=2")


def test_sft_saves_every_checkpoint_interval_and_drops_the_save_at_its_last_step(tmp_path):
    args = trl_config(compose(["checkpoint.every_steps=4"]), Stage.sft, tmp_path)
    assert (args.save_strategy, args.save_steps, args.save_total_limit) == ("steps", 4, None)
    for step, saved in ((4, True), (8, False)):
        control = NoCheckpointAtEnd().on_step_end(args, TrainerState(global_step=step, max_steps=8),
                                                  TrainerControl(should_save=True))
        assert control.should_save is saved


def test_remove_checkpoints_leaves_the_model(tmp_path):
    for name in ("checkpoint-4", "checkpoint-8.damaged", "checkpoints-notes"):
        (tmp_path / name).mkdir()
    (tmp_path / "model.safetensors").write_text("")
    remove_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints-notes", "model.safetensors"]


def sft_losses(results: dict) -> list[float]:
    return [e["loss"] for e in results["sft"]["history"]]


def sft_work_dir(output_root: Path) -> Path:
    (work,) = (output_root / "sft").glob("*.tmp")
    return work


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run, and a run stopped by SIGTERM at SFT step 6 (checkpoints 4 and 6 complete), with
    a copy of its output root taken before anything resumed it."""
    root = tmp_path_factory.mktemp("sft_resume")
    straight = read_results(run_train(*SHORT, output_root=root / "straight"))
    stopped = run_train(*SHORT, output_root=root / "split", check=False, env={"DPO_FAULT_INJECT": "sigterm:6@sft"},
                       wandb=True)
    shutil.copytree(root / "split", root / "damaged", symlinks=True)
    return root, straight, stopped


@pytest.mark.slow
def test_a_signal_during_sft_saves_a_complete_sft_checkpoint_and_exits_75(runs):
    root, _, stopped = runs
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    assert "preempted: checkpoint at step 6 complete" in stopped.stdout
    work = sft_work_dir(root / "split")
    assert {p.name for p in work.iterdir() if (p / "COMPLETE").exists()} == {"checkpoint-4", "checkpoint-6"}
    assert (work / "checkpoint-6" / "MANIFEST.json").exists() and not (work / "COMPLETE").exists()
    (run_dir,) = (root / "split" / "runs").iterdir()
    (stop,) = [json.loads(line) for line in (run_dir / "preemptions.jsonl").read_text().splitlines()]
    assert stop["step"] == 6 and not (run_dir / "results.json").exists()


@pytest.mark.slow
def test_the_rerun_resumes_sft_exactly_and_finishes_both_stages(runs):
    root, straight, _ = runs
    work = sft_work_dir(root / "split")
    proc = run_train(*SHORT, output_root=root / "split", wandb=True)
    assert f"resume: continuing from {work / 'checkpoint-6'}" in proc.stdout
    results = read_results(proc)
    assert results["sft"]["resumed_from"] == str(work / "checkpoint-6") and results["sft"]["steps"] == 8
    assert [e["step"] for e in results["sft"]["history"]] == list(range(1, 9))
    assert_same_run(sft_losses(results), sft_losses(straight))  # data position, RNG and optimizer states restored
    assert results["dpo"]["steps"] == 2 and results["dpo"]["resumed_from"] is None
    # The shared SFT model is the model alone, published under its key; the work directory is gone.
    sft = Path(results["sft"]["path"])
    assert sft.name == Path(straight["sft"]["path"]).name and (sft / "COMPLETE").exists() and not work.exists()
    assert not list(sft.glob("checkpoint-*")) and not (sft / "wandb_run_id").exists()
    assert results["dpo"]["reference_path"] == str(sft)
    resumed_weights = load_file(sft / "model.safetensors")
    straight_weights = load_file(Path(straight["sft"]["path"]) / "model.safetensors")
    # within rounding, as the losses (helpers.runs.assert_same_run)
    assert all(resumed_weights[k].allclose(straight_weights[k], rtol=1e-5, atol=1e-7) for k in straight_weights)
    # One SFT W&B run, continued after the stop (as DPO's is).
    assert len({p.name.rsplit("-", 1)[1] for p in (root / "split" / "sft" / "wandb").glob("offline-run-*")}) == 1


@pytest.mark.slow
def test_a_damaged_sft_checkpoint_falls_back_to_the_previous_one(runs):
    root, straight, _ = runs
    work = sft_work_dir(root / "damaged")
    optimizer = work / "checkpoint-6" / "optimizer.pt"
    data = bytearray(optimizer.read_bytes())
    data[len(data) // 2] ^= 0xFF  # changed in place, same size
    optimizer.write_bytes(bytes(data))
    proc = run_train(*SHORT, output_root=root / "damaged")
    assert ("resume: checkpoint-6 is damaged (optimizer.pt: sha256 mismatch); falling back to checkpoint-4"
            in proc.stdout)
    results = read_results(proc)
    assert results["sft"]["resumed_from"] == str(work / "checkpoint-4")
    assert_same_run(sft_losses(results), sft_losses(straight))
    assert not list(Path(results["sft"]["path"]).glob("checkpoint-*"))  # the set-aside .damaged one too


@pytest.mark.multiproc
def test_sft_resumes_exactly_under_zero3_on_two_processes(tmp_path):
    """The real-model case: ZeRO-3 SFT checkpoints (every rank's RNG and optimizer partition) resume exactly."""
    common = (*SHORT, "deepspeed=zero3", "sft.args.per_device_train_batch_size=16")
    straight = read_results(run_train(*common, output_root=tmp_path / "straight", nproc=2))
    stopped = run_train(*common, output_root=tmp_path / "split", nproc=2, check=False,
                        env={"DPO_FAULT_INJECT": "sigterm:6@sft"})
    assert stopped.returncode != 0 and "preempted: checkpoint at step 6 complete" in stopped.stdout
    checkpoint = sft_work_dir(tmp_path / "split") / "checkpoint-6"
    assert (checkpoint / "COMPLETE").exists() and (checkpoint / "rng_state_1.pth").exists()
    resumed = read_results(run_train(*common, output_root=tmp_path / "split", nproc=2))
    assert resumed["sft"]["resumed_from"] == str(checkpoint)
    assert_same_run(sft_losses(resumed), sft_losses(straight))
