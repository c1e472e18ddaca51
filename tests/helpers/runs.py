"""Running the project as a user does, from the tests: `python -m train` in a subprocess, its results, and checks
shared by several test files. Imported as `from helpers.runs import ...` (tests/ is on sys.path under pytest)."""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers import warm
from train.runtime.distributed import free_port  # noqa: F401  (tests launch processes on a free port too)

REPO = Path(__file__).resolve().parents[2]


def run_train(*overrides: str, output_root: Path, check: bool = True, timeout: int = 600, nproc: int = 1,
              env: dict | None = None, wandb: bool = False, fresh: bool = False) -> subprocess.CompletedProcess:
    """`python -m train` (or `accelerate launch -m train` for nproc > 1) as a user runs it, forked from a warm
    interpreter (helpers/warm.py) unless `fresh` asks for new interpreters and the real launcher; outputs under
    `output_root`; `env` adds (or with None removes) environment variables. W&B is off unless `wandb=True`
    (offline then) or an override sets it: its service takes seconds to start in every run, and only the tests
    that read its files need it."""
    if wandb:
        overrides = (*overrides, "wandb.mode=offline")
    elif not any(o.lstrip("+").startswith("wandb.") for o in overrides):
        overrides = (*overrides, "wandb.mode=disabled")
    env = {**os.environ, "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    env = {k: v for k, v in env.items() if v is not None}  # None in `env` removes a variable
    args = ["train", f"output_root={output_root}", *overrides]
    launch = None
    cmd = [sys.executable, "-m", *args]
    if nproc > 1:
        launch = ["--config_file", str(REPO / "launch/accelerate/single_node.yaml"), "--num_processes", str(nproc),
                  "--main_process_port", str(free_port()), "-m", *args]
        cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", *launch]
    if warm.enabled() and not fresh:
        work = Path(tempfile.gettempdir()) / f"dpo-warm-{os.getpid()}"
        proc = warm.run(cmd, REPO, env, timeout, work, argv=None if launch else args, launch=launch)
    else:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def refused_at_start(*argv: str) -> subprocess.CompletedProcess:
    """`python -m train <argv>` for a command the start check refuses, run in this process: the same main(),
    precheck and error line, without a new interpreter importing torch and TRL (seconds per test). Hydra is
    never started: a command that gets past the start check fails the test instead of training here."""
    from train import main as entry  # deferred: the pipeline's imports load only for the tests that use them

    def not_refused():
        raise AssertionError(f"not refused at start: python -m train {' '.join(argv)}")

    out, err, code = io.StringIO(), io.StringIO(), 0
    saved_argv, saved_hydra_main = sys.argv, entry.hydra_main
    sys.argv, entry.hydra_main = ["train", *argv], not_refused
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            entry.main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.argv, entry.hydra_main = saved_argv, saved_hydra_main
    return subprocess.CompletedProcess(["python", "-m", "train", *argv], code, out.getvalue(), err.getvalue())


def start_check_refusal(overrides: list[str]) -> str:
    """The message the start check refuses these overrides with, in this process; fails the test when they are
    accepted or when the message is more than one line."""
    from train.config.compose import compose  # deferred: the start check's imports load only where it is used
    from train.core.errors import ConfigError
    from train.pipeline.checks import check_config

    with pytest.raises(ConfigError) as err:
        check_config(compose(overrides))
    message = str(err.value)
    assert "\n" not in message, message
    return message


def results_path(proc: subprocess.CompletedProcess) -> Path:
    lines = [line for line in proc.stdout.splitlines() if line.startswith("results: ")]
    assert lines, f"no 'results:' line in output:\n{proc.stdout[-2000:]}"
    return Path(lines[-1].removeprefix("results: "))


def read_results(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(results_path(proc).read_text())


@contextlib.contextmanager
def process_state_restored():
    """For a pipeline run inside the pytest process: afterwards the environment, the signal handlers and
    accelerate's process state are put back, so later tests in this process start clean."""
    from train import seams  # deferred: torch and accelerate load only for the tests that run the pipeline here

    environ = dict(os.environ)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)}
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environ)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        seams.reset_accelerate_state()


def assert_same_run(got: list, want: list) -> None:
    """A resumed run's per-step numbers (losses, betas) against an uninterrupted run's. Bitwise equal on this
    machine in every run we made; on CI's machine one resume differed by 6e-8 (1 float32 ulp) from its first
    resumed step on, a kernel rounding differently from run to run there. A wrong data position, RNG or optimizer
    state moves a loss by more than 1e-3, so rel 1e-5 still tells a broken resume from rounding."""
    assert len(got) == len(want), (got, want)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-7), (got, want)
