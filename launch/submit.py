"""`make submit`: one DPO pipeline run as one SLURM job over N nodes, through hydra-submitit-launcher.

The SLURM settings (partition, account, time, GPUs, CPUs, memory, signal, requeue) come from the Hydra
launcher config conf/hydra/launcher/slurm.yaml and any `hydra.launcher.*=` override. Hydra's launcher
waits for its jobs, so without --wait the submitting process is left running in the background (its log
next to the job's) and this command returns once SLURM has given the job an id.

    python -m launch.submit --nodes 2 --nproc-per-node 1 [--wait] -- deepspeed=zero3 beta.value=0.1
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from train.config.compose import compose
from train.core.cli import fail
from train.core.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def sweep_dir(overrides: list[str]) -> Path:
    try:
        cfg = compose([o for o in overrides if not o.startswith("hydra")])
    except ConfigError as err:
        fail(str(err))
    return (REPO / cfg.output_root / "jobs" / cfg.experiment).resolve()


def job_ids(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*") if p.is_dir()} if folder.is_dir() else set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--nproc-per-node", type=int, default=1)
    parser.add_argument("--wait", action="store_true", help="wait for the job and print `results: <path>`")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    out_dir = sweep_dir(args.overrides)
    submitit_dir = out_dir / ".submitit"
    before = job_ids(submitit_dir)
    cmd = [sys.executable, "-m", "train", "-m", "hydra/launcher=slurm", f"hydra.launcher.nodes={args.nodes}",
           f"nproc_per_node={args.nproc_per_node}", f"hydra.sweep.dir={out_dir}", *args.overrides]
    out_dir.mkdir(parents=True, exist_ok=True)
    log = open(out_dir / "submit.log", "a")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    while not (new := job_ids(submitit_dir) - before):
        if proc.poll() is not None:
            tail = (out_dir / "submit.log").read_text().strip().splitlines()[-1:]
            sys.exit(f"error: submission failed: {tail[0] if tail else 'no output'} (log: {out_dir / 'submit.log'})")
        time.sleep(0.5)
    job_id = sorted(new)[0]
    print(f"job: {job_id} (logs: {submitit_dir / job_id})", flush=True)
    if not args.wait:
        return
    code = proc.wait()
    results = sorted(out_dir.glob("*/results.json"), key=lambda p: p.stat().st_mtime)
    if code != 0 or not results:
        sys.exit(f"error: job {job_id} failed (exit {code}); see {submitit_dir / job_id} and {out_dir / 'submit.log'}")
    print(f"results: {results[-1]}", flush=True)


if __name__ == "__main__":
    main()
