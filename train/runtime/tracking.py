"""Weights & Biases: one place decides the mode, starts runs (main process only) and logs final metrics."""

from __future__ import annotations

import logging
import netrc
import os
import socket
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import urlparse

import wandb
from train.config.schema import MainConfig, ResumeConfig, WandbConfig

from train.core.cli import EXIT_STOPPED
from train.core.ranks import is_main_process
from train.config.choices import WandbMode

WANDB_HOST = "api.wandb.ai"


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def _server() -> tuple[str, int]:
    url = urlparse(os.environ.get("WANDB_BASE_URL", f"https://{WANDB_HOST}"))
    return url.hostname or WANDB_HOST, url.port or (443 if url.scheme == "https" else 80)


def _reachable(timeout_s: float = 3.0) -> bool:
    try:
        with socket.create_connection(_server(), timeout=timeout_s):
            return True
    except OSError:
        return False


def resolve_mode(cfg_wandb: WandbConfig) -> tuple[str, str]:
    """(mode, reason). `auto` never waits on the network for more than a few seconds."""
    if not cfg_wandb.enabled or cfg_wandb.mode == WandbMode.disabled:
        return "disabled", "wandb.enabled=false"
    wanted = cfg_wandb.mode if cfg_wandb.mode != WandbMode.auto else os.environ.get("WANDB_MODE") or "auto"
    if wanted in ("offline", "disabled"):
        return wanted, f"mode {wanted} requested"
    # online or auto: go online only if it can work, so training never waits on the network.
    if not _has_api_key():
        return "offline", "no W&B API key (WANDB_API_KEY or netrc); writing offline files, upload later with `wandb sync`"
    host, port = _server()
    if not _reachable():
        return "offline", f"W&B server {host}:{port} is unreachable; writing offline files, upload later with `wandb sync`"
    return "online", "API key found and W&B reachable"


def start_run(
    cfg: MainConfig, resolved: Mapping[str, Any], run_dir: Path, job_type: str, name: str, run_id: Optional[str] = None
) -> Optional[Any]:
    """Start (or with `run_id`, continue) a W&B run on the main process; None elsewhere or when disabled."""
    mode, reason = resolve_mode(cfg.wandb)
    if not is_main_process() or mode == WandbMode.disabled:
        return None
    os.environ.setdefault("WANDB_WATCH", "false")
    # W&B's console capture sends every printed line to its service process from a thread of its own. When a
    # preemption signal ends that service, the thread's writes fail before this process's signal handler runs (it
    # waits for the main thread to leave a torch call), and asyncio warns "socket.send() raised exception." for
    # each line. asyncio is W&B's here; its errors still show.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    settings = dict(
        project=cfg.wandb.project,
        entity=cfg.wandb.entity,
        group=cfg.wandb.group or cfg.experiment,
        name=cfg.wandb.name or name,
        job_type=job_type,
        tags=list(cfg.wandb.tags),
        config=resolved,
        dir=str(run_dir),
        id=run_id,
        resume="allow" if run_id else None,
    )
    try:
        run = wandb.init(mode=mode, settings=wandb.Settings(init_timeout=20, silent=True), **settings)
    except Exception as err:  # a bad key, entity or server: train anyway, offline
        if mode == WandbMode.offline:
            print(f"wandb: disabled (offline start failed: {' '.join(str(err).split())[:200]})", flush=True)
            return None
        reason = f"online start failed: {type(err).__name__} {' '.join(str(err).split())[:200]}; writing offline files"
        mode, run = "offline", wandb.init(mode="offline", settings=wandb.Settings(silent=True), **settings)
    print(f"wandb: {mode} ({reason})", flush=True)
    if job_type == "dpo":
        (run_dir / RUN_ID_FILE).write_text(run.id)
    return run


RUN_ID_FILE = "wandb_run_id"


def stored_run_id(run_dir: Path, resume: ResumeConfig) -> Optional[str]:
    path = run_dir / RUN_ID_FILE
    return path.read_text().strip() if resume.enabled and path.exists() else None


def report_to(run, others=None) -> list[str]:
    """The trainers' report_to: the user's other reporters (`*.args.report_to`), and W&B when a run was
    started here (the trainers' WandbCallback attaches to it)."""
    others = [others] if isinstance(others, str) else list(others or [])
    return [n for n in others if n != "none"] + (["wandb"] if run is not None else [])


def run_info(run, wandb_cfg: WandbConfig) -> dict:
    """What results.json records of the W&B run (None fields when W&B was off or this is not the main process)."""
    return {
        "run_id": run.id if run else None,
        "dir": str(Path(run.dir).parent) if run else None,
        "project": wandb_cfg.project,
        "mode": None if run is None else "offline" if run.offline else "online",
    }


def log_summary(run, metrics: dict[str, Any]) -> None:
    if run is not None and metrics:
        run.log(metrics)
        run.summary.update(metrics)


def finish(run) -> None:
    if run is not None:
        run.finish()


def close_after_preemption(run) -> None:
    """Close the W&B run of a stopped job without raising. Called after the requeue: the signal may have
    ended W&B's service process too (SLURM signals every process of the job step), and then every W&B call
    raises `ConnectionResetError`. W&B's teardown runs here, errors caught, so that its exit
    hook neither prints a traceback nor changes the exit code later."""
    if run is None:
        return
    files = Path(run.dir).parent
    problem = None
    try:
        run.mark_preempting()  # with a non-zero exit code: shown as preempted (it resumes), not failed
        run.finish(exit_code=EXIT_STOPPED)
    except (Exception, SystemExit) as err:
        problem = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
    try:
        wandb.teardown(exit_code=EXIT_STOPPED)  # unregisters W&B's exit hook first; may sys.exit(service's code)
    except (Exception, SystemExit) as err:
        problem = problem or f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
    if problem:
        what = "its offline files" if run.offline else "what it had not uploaded"
        print(f"wandb: could not close the run ({problem}; its service process was probably signalled too); "
              f"{what} are in {files}: `wandb sync {files}` uploads them later", flush=True)
