"""Inside a SLURM job started by hydra-submitit-launcher: one `accelerate launch` per node.

Training-side logic (a submitit task hands over to the node's processes), so it lives in train/, not in
launch/ (operator tools).

submitit starts one task per node (hydra.launcher.tasks_per_node=1) and runs the Hydra job function
there; for a multi-node or multi-process job that function hands over to this module, which starts
`accelerate launch` with this node's machine rank, the first node's address (from `scontrol`, as
SLURM's own view of the node, not a guessed hostname) and a port derived from the job id (the same on
every node, different for jobs sharing a host). The workers re-enter `python -m train` with the same
overrides and the job's run directory. launch/slurm/dpo.sbatch does the same without Hydra.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import submitit

from train.core.files import read_json

MULTI_NODE_CONFIG = Path(__file__).resolve().parents[2] / "launch" / "accelerate" / "multi_node.yaml"


def submitit_job_environment():
    """The submitit job environment when this process is a submitit task (not one of its workers)."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm" or "LOCAL_RANK" in os.environ:
        return None
    return submitit.JobEnvironment()


def node_address(hostname: str) -> str:
    out = subprocess.run(["scontrol", "show", "node", hostname], capture_output=True, text=True, check=True).stdout
    match = re.search(r"NodeAddr=(\S+)", out)
    return match.group(1) if match else hostname


def port_for_job(job_id: str) -> int:
    return 20000 + int(re.sub(r"\D", "", job_id) or 0) % 20000


def launch_command(env, overrides: list[str], run_dir: Path, nproc_per_node: int) -> list[str]:
    accelerate = str(Path(sys.executable).parent / "accelerate")
    job_id = os.environ.get("SLURM_ARRAY_JOB_ID", "") + os.environ.get("SLURM_ARRAY_TASK_ID", "") or env.job_id
    return [
        accelerate, "launch",
        "--config_file", str(MULTI_NODE_CONFIG),
        "--num_machines", str(env.num_nodes),
        "--machine_rank", str(env.node),
        "--num_processes", str(env.num_nodes * nproc_per_node),
        "--main_process_ip", node_address(env.hostnames[0]),
        "--main_process_port", str(port_for_job(job_id)),
        "-m", "train", *overrides,
        # Quoted: run directory names contain '=' and ',' that Hydra would otherwise parse as a sweep.
        f"hydra.run.dir='{run_dir}'",
    ]


def run_on_this_node(env, overrides: list[str], run_dir: Path, nproc_per_node: int) -> None:
    cmd = launch_command(env, overrides, run_dir, nproc_per_node)
    print(f"node {env.node}/{env.num_nodes}: {' '.join(cmd)}", flush=True)
    code = subprocess.call(cmd)
    if code != 0:
        raise SystemExit(f"error: accelerate launch on node {env.node} exited with {code}")


@dataclass(frozen=True)
class HandedOver:
    results: dict | None  # the run's results.json as this node's processes left it (None: none written)


def hand_over_to_node(overrides: list[str], run_dir: Path, nproc_per_node: int) -> HandedOver | None:
    """In a submitit task of a multi-node or multi-process job: start this node's processes, which re-enter
    `python -m train`, and wait for them. None when this process runs the job itself."""
    env = submitit_job_environment()
    if env is None or env.num_nodes * nproc_per_node <= 1:
        return None
    run_on_this_node(env, overrides, run_dir, nproc_per_node)
    results = read_json(run_dir / "results.json")
    if env.global_rank == 0 and results is not None:
        print(f"results: {run_dir / 'results.json'}", flush=True)
    return HandedOver(results)
