"""A full or read-only disk is one `error:` line naming the path and the cause, on the first run
and on a rerun; a read-only output root is refused before anything is written.

Real file systems: small tmpfs mounts (the tests run as root here and in CI)."""

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers.runs import run_train
from train.core.storage import storage_problem, unwritable

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")


@contextmanager
def tmpfs(path: Path, size: str, readonly: bool = False):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"{'ro,' if readonly else ''}size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def one_error_line(proc) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return errors[0]


@pytest.mark.slow
def test_a_disk_that_fills_up_is_one_line_on_the_run_and_on_the_rerun(tmp_path):
    with tmpfs(tmp_path / "small", "3M") as root:
        for _ in range(2):  # the rerun finds the same full disk and the partial files of the first run
            proc = run_train("debug=fast", "sft.enabled=false", "eval.enabled=false", "checkpoint.every_steps=2",
                             output_root=root / "out", check=False)
            line = one_error_line(proc)
            assert "no space left on device" in line and str(root) in line, line


def test_a_read_only_output_root_is_refused_before_anything_is_written(tmp_path):
    with tmpfs(tmp_path / "ro", "1M", readonly=True) as root:
        assert "read-only file system" in unwritable(root / "out")
        proc = run_train("debug=fast", output_root=root / "out", check=False)
        line = one_error_line(proc)
        assert f"output_root={root / 'out'}" in line and "read-only" in line
        assert list(root.iterdir()) == []


def test_storage_errors_are_told_from_bugs(tmp_path):
    assert storage_problem(OSError(28, "No space left on device", "x.pt"), tmp_path) == "x.pt: no space left on device"
    assert storage_problem(ValueError("a bug"), tmp_path) is None  # plenty of space: not a disk problem
