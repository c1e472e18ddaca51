"""Launch and housekeeping: a refused accelerate config is one line before any process starts (make train) and one
line inside the processes; a run keeps its console output in run.log; a refused start leaves no empty run
directory; a finished run prunes its checkpoints (checkpoint.keep_at_end); a real model at the tiny model's
learning rates gets a hint."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trl

from helpers.runs import REPO, free_port, read_results, results_path, run_train
from helpers.typed import typed

TRL_CONFIGS = Path(trl.__file__).parent / "accelerate_configs"
MULTI_CPU = ("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_CPU\nmixed_precision: 'no'\n"
             "num_machines: 1\nnum_processes: 2\nuse_cpu: true\n")


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def test_make_train_refuses_a_bad_accelerate_config_before_accelerate_starts(tmp_path):
    config = tmp_path / "multi_cpu.yaml"
    config.write_text(MULTI_CPU)
    out = tmp_path / "out"
    proc = subprocess.run(["make", "--no-print-directory", "train", "NPROC=2", f"ACCELERATE_CONFIG={config}",
                           f"ARGS=debug=fast output_root={out}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    errors = error_lines(proc.stderr)
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr[-3000:]
    assert errors[0].startswith(f"error: ACCELERATE_CONFIG={config}: the accelerate config asks for several CPU")
    assert "Traceback" not in proc.stderr  # accelerate never started (it reports a failed process in one)
    assert not out.exists()


@pytest.mark.parametrize("config,expected", [
    (TRL_CONFIGS / "multi_gpu.yaml", "sets mixed_precision bf16"),
    (TRL_CONFIGS / "zero3.yaml", "sets distributed_type DEEPSPEED"),
    (TRL_CONFIGS / "fsdp2.yaml", "sets distributed_type FSDP"),
    (None, "asks for several CPU processes"),
    (Path("/nonexistent/accelerate.yaml"), "no such file"),
])
def test_check_nproc_reads_the_accelerate_config(config, expected, tmp_path):
    if config is None:
        config = tmp_path / "multi_cpu.yaml"
        config.write_text(MULTI_CPU)
    proc = subprocess.run([sys.executable, "launch/check_nproc.py", "2", str(config)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    errors = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(errors) == 1 and expected in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("config", ["launch/accelerate/single_node.yaml", "launch/accelerate/multi_node.yaml"])
def test_check_nproc_passes_our_own_accelerate_configs(config):
    proc = subprocess.run([sys.executable, "launch/check_nproc.py", "2", config], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and not error_lines(proc.stderr), proc.stderr


@pytest.mark.multiproc
def test_a_refusal_inside_the_processes_is_printed_once(tmp_path):
    """accelerate launch without make: every process finds the bf16 config, only rank 0 says so."""
    accelerate = Path(sys.executable).parent / "accelerate"
    proc = subprocess.run([str(accelerate), "launch", "--config_file", str(TRL_CONFIGS / "multi_gpu.yaml"),
                           "--num_processes", "2", "--main_process_port", str(free_port()), "-m", "train", "debug=fast",
                           f"output_root={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    errors = error_lines(proc.stderr)
    assert proc.returncode != 0 and len(errors) == 1 and "mixed_precision bf16" in errors[0], proc.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []


def test_a_start_refused_after_hydra_made_the_run_dir_leaves_no_empty_directory(tmp_path):
    """A data error comes after the precheck, once Hydra has created the run directory: it is removed again."""
    proc = run_train("debug=fast", "data=custom", f"data.source={tmp_path / 'missing.jsonl'}", "name=refused",
                     output_root=tmp_path, check=False)
    assert proc.returncode == 2 and "no such file" in error_lines(proc.stderr)[0], proc.stderr[-2000:]
    assert (tmp_path / "runs").is_dir() and not (tmp_path / "runs" / "refused").exists()


def test_a_dry_run_leaves_no_run_directory_and_an_older_empty_one_is_kept(tmp_path):
    older = tmp_path / "runs" / "older"
    older.mkdir(parents=True)
    time.sleep(1.5)  # made well before the run's process starts
    run_train("debug=fast", "dry_run=true", "name=dry", output_root=tmp_path)
    assert not (tmp_path / "runs" / "dry").exists()
    proc = run_train("debug=fast", "data=custom", f"data.source={tmp_path / 'missing.jsonl'}", "name=older",
                     output_root=tmp_path, check=False)
    assert proc.returncode == 2 and older.is_dir()  # not made by that run: left alone


def test_real_model_at_the_tiny_learning_rates_gets_a_hint():
    from train.config.compose import compose
    from train.console.summary import real_model_hint, settings_lines

    lines = settings_lines(typed(compose(["model=qwen2_5_0_5b"])), Path("/runs/x"), 1, 1)
    (hint,) = [line for line in lines if line.startswith("hint:")]
    assert "sft lr 3.0e-03, dpo lr 1.0e-03" in hint and "recipe=real_model" in hint
    assert real_model_hint(typed(compose(["model=qwen2_5_0_5b", "recipe=real_model"]))) is None
    assert real_model_hint(typed(compose([]))) is None  # the tiny model: those rates are its own
    only_dpo = real_model_hint(typed(compose(["model=qwen2_5_0_5b", "sft.args.learning_rate=1e-5"])))
    assert only_dpo is not None and "sft" not in only_dpo.split(":")[1]


def test_prune_at_end_keeps_what_keep_at_end_says(tmp_path):
    from train.config.choices import KeepAtEnd
    from train.core.files import mark_complete
    from train.trainer.checkpoint import prune_at_end

    def layout() -> Path:
        root = tmp_path / "run"
        shutil.rmtree(root, ignore_errors=True)
        for name in ("checkpoint-4", "checkpoint-8", "checkpoint-12"):
            (root / "dpo" / name).mkdir(parents=True)
            (root / "dpo" / name / "optimizer.pt").write_bytes(b"x" * 10)
            if name != "checkpoint-12":
                mark_complete(root / "dpo" / name)
        (root / "dpo" / "checkpoint-2.damaged").mkdir()
        (root / "policy").mkdir()
        return root

    def left(root: Path) -> list[str]:
        return sorted(p.name for p in (root / "dpo").iterdir())

    root = layout()
    assert prune_at_end(root / "dpo", root / "policy", KeepAtEnd.none) == [] and len(left(root)) == 4  # policy unfinished
    mark_complete(root / "policy")
    assert prune_at_end(root / "dpo", root / "policy", KeepAtEnd.all) == [] and len(left(root)) == 4
    prune_at_end(root / "dpo", root / "policy", KeepAtEnd.last)
    assert left(root) == ["checkpoint-8"]  # the newest complete one
    root = layout()
    mark_complete(root / "policy")
    prune_at_end(root / "dpo", root / "policy", KeepAtEnd.none)
    assert left(root) == []


@pytest.mark.slow
def test_a_finished_run_keeps_its_log_and_prunes_its_checkpoints(tmp_path):
    short = ("debug=fast", "eval.enabled=false", "data.synthetic.num_sft=64", "data.synthetic.num_pairs=256",
             "+sft.args.max_steps=2", "+dpo.args.max_steps=8", "checkpoint.every_steps=4", "name=kept")
    proc = run_train(*short, "checkpoint.keep_at_end=none", output_root=tmp_path)
    run_dir = results_path(proc).parent
    log = (run_dir / "run.log").read_text()
    for line in ("== run: stage all", "== sft: training", "== dpo: training", "== summary:", "results: "):
        assert line in log, line
    assert "dpo step" in log and "\r" not in log  # the trainer's bar left out, its metric lines kept
    assert "checkpoints none (checkpoint.keep_at_end)" in proc.stdout
    assert not list((run_dir / "dpo").glob("checkpoint-*")) and read_results(proc)["dpo"]["steps"] > 4
    # Rerun with training again: the log grows after a separator, the last checkpoint is kept.
    again = run_train(*short, "resume.enabled=false", "checkpoint.keep_at_end=last", output_root=tmp_path)
    assert results_path(again).parent == run_dir
    log = (run_dir / "run.log").read_text()
    assert log.count("== run: stage all") == 2 and "===== run started again" in log
    (kept,) = (run_dir / "dpo").glob("checkpoint-*")
    assert f"checkpoints {kept.name} (" in again.stdout
