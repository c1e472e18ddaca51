"""A warm interpreter for `python -m train` runs: it imports the training stack once, then forks a child per run
that executes `python -m train <overrides>` as a fresh interpreter would (runpy, the run's own environment,
working directory, stdout and stderr files, default signal handlers, exit code, atexit hooks). A multi-process
run forks a launcher that does what `accelerate launch` does on one machine: accelerate's own argument parsing
and environment, then torch's elastic agent with the same launch config, told to fork each rank and run it as a
function (its rank variables, rendezvous and "one rank failed: stop the others" are the agent's own). Two
private accelerate helpers (_validate_launch_command, _filter_args) do the parsing, as in `accelerate launch`
itself: if a release renames them, every multi-process test fails at once with the ImportError.

Why: a fresh interpreter spends seconds of CPU importing torch, transformers, TRL, datasets and DeepSpeed before
the run's first line, and the tests start about two hundred processes of the project: on a 2-core machine those
imports were most of `make test`'s time (an `accelerate launch` of 2 ranks is 3 of them). The tests that must see
the real launchers still start fresh interpreters: `run_train(..., fresh=True)` (the rank-death test, one ZeRO-3
run), the launcher tests, `make` targets, signals from outside, SLURM jobs. DPO_TEST_FRESH_PROCESSES=1 gives
every run a fresh interpreter again.

One warm interpreter per pytest process (each xdist worker runs one test at a time); the protocol is one JSON
line per request and per reply on the server's stdin and a copy of its stdout.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

# The server: imports, then serves fork requests until its stdin closes.
SERVER = r'''
import json, os, runpy, signal, sys, traceback, atexit
proto = os.fdopen(os.dup(1), "w", buffering=1)
devnull = os.open(os.devnull, os.O_RDWR)
os.dup2(devnull, 1)
import train.main, train.pipeline.run, train.pipeline.sft, train.pipeline.dpo, train.pipeline.evaluate  # noqa
import train.trainer.builders, trl, deepspeed, wandb  # noqa: the stack every run imports


def run_module(argv):
    """`python -m <argv>` in this process; returns the exit code a fresh interpreter would give."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.argv = ["-m", *argv[1:]]
    code = 1
    try:
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr); code = 1
    except KeyboardInterrupt:  # as the interpreter ends on one: its traceback, then killed by SIGINT
        traceback.print_exc(); sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL); os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        traceback.print_exc(); code = 1
    atexit._run_exitfuncs()
    return code


def rank_main(argv):
    """One rank, in a child the elastic agent forked: `python -u -m <argv>` as the agent would have started it."""
    sys.stdout.reconfigure(line_buffering=True)
    code = run_module(argv)
    sys.stdout.flush(); sys.stderr.flush()
    if code:
        raise SystemExit(code)


def launch(launch_argv):
    """`accelerate launch <launch_argv>` on one machine, with the ranks forked from this process: accelerate's own
    parsing and environment, then torch's elastic agent with the LaunchConfig that `accelerate launch` gives it
    (rank variables, rendezvous, stop-the-others-on-failure), the agent starting each rank with fork and a function
    instead of a new interpreter. accelerate exits 1 when a rank failed; so does this."""
    import torch.distributed.run as distrib_run
    from accelerate.commands.launch import launch_command_parser, _validate_launch_command
    from accelerate.utils.launch import _filter_args, prepare_multi_gpu_env
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(launch_argv))
    os.environ.update(prepare_multi_gpu_env(args))
    torchrun = _filter_args(args, distrib_run.get_args_parser(),
                            ["--training_script", args.training_script, "--training_script_args", args.training_script_args])
    config, _, _ = distrib_run.config_from_args(torchrun)
    config.start_method = "fork"
    try:
        elastic_launch(config, rank_main)([args.training_script, *args.training_script_args])
    except ChildFailedError as failed:
        print(failed, file=sys.stderr)
        return 1
    return 0


for line in sys.stdin:
    request = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            proto.close()
            os.setpgid(0, 0)  # its own process group: a timed-out run is killed with every process it started
            os.chdir(request["cwd"])
            os.environ.clear(); os.environ.update(request["env"])
            out = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            err = os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(devnull, 0); os.dup2(out, 1); os.dup2(err, 2)
            sys.path[0] = request["cwd"]
            code = launch(request["launch"]) if request.get("launch") else run_module(request["argv"])
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush(); sys.stderr.flush()
            finally:
                os._exit(code)
    proto.write(json.dumps({"pid": pid}) + "\n")
    _, status = os.waitpid(pid, 0)
    proto.write(json.dumps({"code": os.waitstatus_to_exitcode(status)}) + "\n")
'''

_server: subprocess.Popen | None = None
_pending = b""  # reply bytes read but not yet consumed (two replies can arrive in one read)


def enabled() -> bool:
    return os.environ.get("DPO_TEST_FRESH_PROCESSES") != "1"


def _start(cwd: Path) -> subprocess.Popen:
    global _server
    if _server is None or _server.poll() is not None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        _server = subprocess.Popen([sys.executable, "-c", SERVER], cwd=cwd, env=env, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, bufsize=0)
    return _server


def _reply(server: subprocess.Popen, deadline: float) -> dict:
    global _pending
    while b"\n" not in _pending:
        ready, _, _ = select.select([server.stdout], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            raise TimeoutError
        chunk = os.read(server.stdout.fileno(), 65536)
        if not chunk:
            raise RuntimeError("the warm interpreter exited; rerun with DPO_TEST_FRESH_PROCESSES=1 to see why")
        _pending += chunk
    line, _pending = _pending.split(b"\n", 1)
    return json.loads(line)


def run(cmd: list[str], cwd: Path, env: dict, timeout: float, work: Path, argv: list[str] | None = None,
        launch: list[str] | None = None) -> subprocess.CompletedProcess:
    """`python -m <argv>` (or `accelerate launch <launch>`) in a forked child of the warm interpreter; returns
    what subprocess.run of `cmd` would."""
    server = _start(cwd)
    work.mkdir(parents=True, exist_ok=True)
    out, err = work / f"stdout.{time.monotonic_ns()}", work / f"stderr.{time.monotonic_ns()}"
    request = {"argv": argv, "launch": launch, "env": env, "cwd": str(cwd), "out": str(out), "err": str(err)}
    server.stdin.write((json.dumps(request) + "\n").encode())
    deadline = time.monotonic() + timeout
    pid = _reply(server, deadline)["pid"]
    try:
        code = _reply(server, deadline)["code"]
    except TimeoutError:
        os.killpg(pid, signal.SIGKILL)  # the run and every process it started (its own process group)
        _reply(server, time.monotonic() + 30)
        raise subprocess.TimeoutExpired(cmd, timeout, out.read_text(errors="replace"), err.read_text(errors="replace"))
    proc = subprocess.CompletedProcess(cmd, code, out.read_text(errors="replace"), err.read_text(errors="replace"))
    out.unlink(), err.unlink()
    return proc
