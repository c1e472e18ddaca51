"""Weights & Biases: one place decides the mode, starts runs (main process only) and logs final metrics."""

from __future__ import annotations

import netrc
import os
import socket
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

WANDB_HOST = "api.wandb.ai"


def is_main_process() -> bool:
    # Read from the launcher's environment: valid before torch.distributed or accelerate start.
    return int(os.environ.get("RANK", "0")) == 0


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def _reachable(host: str, timeout_s: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def resolve_mode(cfg_wandb: DictConfig) -> tuple[str, str]:
    """(mode, reason). `auto` never waits on the network for more than a few seconds."""
    if not cfg_wandb.enabled or cfg_wandb.mode == "disabled":
        return "disabled", "wandb.enabled=false"
    if cfg_wandb.mode != "auto":
        return cfg_wandb.mode, f"wandb.mode={cfg_wandb.mode}"
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"], "WANDB_MODE is set"
    if not _has_api_key():
        return "offline", "no W&B API key (WANDB_API_KEY or netrc); writing offline files, upload later with `wandb sync`"
    if not _reachable(WANDB_HOST):
        return "offline", f"{WANDB_HOST} is unreachable; writing offline files, upload later with `wandb sync`"
    return "online", "API key found and W&B reachable"


def start_run(
    cfg: DictConfig, resolved: dict, run_dir: Path, job_type: str, name: str, run_id: Optional[str] = None
) -> Optional[Any]:
    """Start (or with `run_id`, continue) a W&B run on the main process; None elsewhere or when disabled."""
    mode, reason = resolve_mode(cfg.wandb)
    if not is_main_process() or mode == "disabled":
        return None
    import wandb

    print(f"wandb: {mode} ({reason})", flush=True)
    os.environ.setdefault("WANDB_WATCH", "false")
    return wandb.init(
        project=cfg.wandb.project,
        entity=cfg.wandb.entity,
        group=cfg.wandb.group or cfg.experiment,
        name=cfg.wandb.name or name,
        job_type=job_type,
        tags=list(cfg.wandb.tags),
        config=resolved,
        dir=str(run_dir),
        mode=mode,
        id=run_id,
        resume="allow" if run_id else None,
        settings=wandb.Settings(init_timeout=30, silent=True),
    )


def report_to(run) -> list[str]:
    """The trainers' report_to: their WandbCallback attaches to the run started here."""
    return ["wandb"] if run is not None else []


def log_summary(run, metrics: dict[str, Any]) -> None:
    if run is not None and metrics:
        run.log(metrics)
        run.summary.update(metrics)


def finish(run) -> None:
    if run is not None:
        run.finish()
