"""accelerate configs that set DeepSpeed, FSDP or mixed precision (TRL ships such ones) are refused at start,
in one line that says what to launch with instead; so is a MULTI_CPU config that would start one process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trl

from helpers.runs import REPO, free_port

TRL_CONFIGS = Path(trl.__file__).parent / "accelerate_configs"


@pytest.mark.parametrize("env,expected", [
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, "sets distributed_type DEEPSPEED"),
    ({"ACCELERATE_USE_FSDP": "true"}, "sets distributed_type FSDP"),
    ({"ACCELERATE_MIXED_PRECISION": "bf16"}, "sets mixed_precision bf16: here precision comes from the trainer args"),
])
def test_launcher_settings_are_refused_in_one_line(env, expected, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train", "debug=fast", f"output_root={tmp_path}"], cwd=REPO,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and expected in errors[0], proc.stderr[-2000:]
    assert "launch/accelerate/single_node.yaml" in errors[0] and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_multi_cpu_accelerate_config_that_would_start_one_process_is_refused(tmp_path):
    """distributed_type MULTI_CPU / use_cpu with num_processes 2: accelerate's simple launcher starts one process
    (no mpirun) and the run would silently train on one."""
    config = tmp_path / "multi_cpu.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_CPU\nmixed_precision: 'no'\n"
                      "num_machines: 1\nnum_processes: 2\nuse_cpu: true\n")
    accelerate = Path(sys.executable).parent / "accelerate"
    out = tmp_path / "out"
    proc = subprocess.run([str(accelerate), "launch", "--config_file", str(config), "--main_process_port",
                           str(free_port()), "-m", "train", "debug=fast", f"output_root={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr[-3000:]
    assert "asks for several CPU processes" in errors[0] and "launch/accelerate/single_node.yaml" in errors[0]
    assert not out.exists()


def test_trls_zero3_accelerate_config_stops_before_anything_runs(tmp_path):
    accelerate = Path(sys.executable).parent / "accelerate"
    proc = subprocess.run([str(accelerate), "launch", "--config_file", str(TRL_CONFIGS / "zero3.yaml"), "--num_processes", "1",
                           "--main_process_port", str(free_port()), "-m", "train", "debug=fast", f"output_root={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and errors and "add deepspeed=zero3" in errors[0], proc.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []  # (the launcher's own report of the failed child follows our line)
