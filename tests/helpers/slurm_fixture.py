"""Session fixture for tests that need the real local 2-node SLURM cluster (n1, n2).

tests/conftest.py imports it, so any test can ask for `slurm_cluster`.
`cluster.sh up` is idempotent and takes well under a second when the cluster is already up;
the cluster is left running at the end so later tests (and people) can keep using it.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "launch" / "slurm" / "cluster.sh"
NODES = ("n1", "n2")


@pytest.fixture(scope="session")
def slurm_cluster():
    """Bring the cluster up once per session and yield its node names."""
    if os.geteuid() != 0 and shutil.which("sbatch") is None:
        pytest.skip("SLURM is not installed and only root can install it (cluster.sh up)")
    # A cold start installs the Debian packages (~15 s), hence the generous timeout.
    proc = subprocess.run(["bash", str(CLUSTER_SH), "up"], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip()
        if os.geteuid() != 0:
            pytest.skip(msg)
        pytest.fail(f"cluster.sh up failed: {msg}")
    yield NODES


def dpo_steps_logged(jobs: Path) -> int:
    """DPO steps the submitit jobs under `jobs` have logged so far: one console line per logging step
    (train/console/progress.py: "dpo step 4/16 loss ... margins ...")."""
    return sum(len(re.findall(r"^dpo step \d+/\d+ .*margins", p.read_text(), re.M))
               for p in jobs.glob(".submitit/*/*_log.out"))
