"""End-to-end checks of the local 2-node SLURM cluster (launch/slurm/cluster.sh)."""

import re
import subprocess
import time

import pytest


pytestmark = pytest.mark.slurm


def sbatch(*args, cwd, timeout=60):
    return subprocess.run(["sbatch", "--quiet", "--time=2", "--chdir", str(cwd), *args],
                          capture_output=True, text=True, timeout=timeout)


def test_two_node_job_runs_one_task_per_node(slurm_cluster, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        "srun bash -c 'echo \"rank node=$SLURM_NODEID proc=$SLURM_PROCID\"'\n"
        'scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/^/host /"\n'
    )
    out = tmp_path / "out.txt"
    proc = sbatch("--nodes=2", "--ntasks-per-node=1", "--wait", "-o", str(out), str(script), cwd=tmp_path)
    text = out.read_text() if out.exists() else ""
    assert proc.returncode == 0, proc.stderr + text
    ranks = set(re.findall(r"rank node=(\d+) proc=(\d+)", text))
    assert ranks == {("0", "0"), ("1", "1")}, text
    assert set(re.findall(r"^host (\S+)$", text, re.M)) == set(slurm_cluster), text


def test_job_array_tasks_all_run_together(slurm_cluster, tmp_path):
    # hydra-submitit-launcher submits a multirun as one job array; its tasks must run side by side.
    proc = sbatch("--array=0-1", "--wait", "-o", str(tmp_path / "task_%a.txt"),
                  "--wrap", 'echo "$SLURM_ARRAY_TASK_ID $(date +%s.%N)"; sleep 3; date +%s.%N',
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    spans = {}
    for i in (0, 1):
        first, end = (tmp_path / f"task_{i}.txt").read_text().split("\n")[:2]
        task_id, start = first.split()
        assert task_id == str(i)
        spans[i] = (float(start), float(end))
    assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values()), spans


def test_usr2_then_self_requeue_reruns_job(slurm_cluster, tmp_path):
    # The preemption path used by submitit: USR2 reaches the batch shell, which requeues itself.
    # A plain `scancel --signal=USR2` only reaches job steps (srun); --batch reaches the script.
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        'trap \'echo "usr2"; scontrol requeue "$SLURM_JOB_ID"; exit 0\' USR2\n'
        'echo "run $SLURM_RESTART_COUNT"\n'
        '[[ ${SLURM_RESTART_COUNT:-0} -ge 1 ]] && exit 0\n'
        "sleep 50 & wait $!\n"  # a foreground sleep would hold the trap back until it ended
    )
    out = tmp_path / "out.txt"
    waiter = subprocess.Popen(
        ["sbatch", "--parsable", "--wait", "--requeue", "--time=2", "--open-mode=append", "--chdir", str(tmp_path),
         "-o", str(out), str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_id = waiter.stdout.readline().strip()  # printed at submission, before the wait
    try:
        deadline = time.time() + 20
        while not (out.exists() and "run" in out.read_text()):
            assert time.time() < deadline, f"job {job_id} did not start"
            time.sleep(0.2)
        subprocess.run(["scancel", "--batch", "--signal=USR2", job_id], check=True, timeout=10)
        _, stderr = waiter.communicate(timeout=50)
    finally:  # never leave the job or the waiting sbatch behind for the next test
        if waiter.poll() is None:
            waiter.kill()
            subprocess.run(["scancel", job_id], timeout=10)
    text = out.read_text()
    assert waiter.returncode == 0, stderr + text
    assert "usr2" in text and "run 1" in text, text
