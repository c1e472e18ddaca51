"""Fault injection for the fault-tolerance tests, off unless DPO_FAULT_INJECT is set.

DPO_FAULT_INJECT holds comma-separated `kind:step[:rank][@stage]` items, in DPO unless `@sft` says SFT
(e.g. sigterm:6@sft stops SFT at its step 6):
  nan:5        the DPO loss becomes NaN at optimizer step 5 (on every rank)
  sigterm:4    the process sends itself SIGTERM at step 4 (as a scheduler would)
  sigint:4     the process sends itself SIGINT at step 4 (Ctrl-C); twice (sigint:4,sigint:4) for a double Ctrl-C
  wandbkill:4  W&B's service processes (wandb-core and its helpers) get SIGTERM at step 4 and are gone
               before training goes on: `scancel --signal=TERM` reaches them too; pair it with
               sigterm:4 for the whole job's signal
  die:6:1      rank 1 exits abruptly at step 6 (a crashed node)
  save:8       the process exits abruptly while saving checkpoint 8 (files written, not yet complete)
Real code paths run: only the event is simulated.
"""

from __future__ import annotations

import os
import signal

import psutil

from train.core.ranks import rank


_stage = "dpo"  # the stage now training (set_stage): an item fires only in the stage it names


def set_stage(stage: str) -> None:
    global _stage
    _stage = stage


def _items() -> list[tuple[str, int, int | None]]:
    out = []
    for item in filter(None, os.environ.get("DPO_FAULT_INJECT", "").split(",")):
        item, _, stage = item.partition("@")
        if (stage or "dpo") != _stage:
            continue
        kind, step, *rank = item.split(":")
        out.append((kind, int(step), int(rank[0]) if rank else None))
    return out


def _hit(kind: str, step: int) -> bool:
    return any(k == kind and s == step and (r is None or r == rank()) for k, s, r in _items())


def poison_loss(loss, step: int):
    return loss * float("nan") if _hit("nan", step) else loss


def maybe_signal(step: int) -> None:
    if _hit("sigterm", step):
        os.kill(os.getpid(), signal.SIGTERM)
    rank_now = rank()
    for kind, at, only in _items():
        if kind == "sigint" and at == step and only in (None, rank_now):
            os.kill(os.getpid(), signal.SIGINT)


def maybe_kill_helpers(step: int) -> None:
    if not _hit("wandbkill", step):
        return
    helpers = {p: p.name() for p in psutil.Process().children(recursive=True) if p.name().startswith("wandb")}
    for p in helpers:
        p.terminate()
    psutil.wait_procs(list(helpers), timeout=10)
    print(f"fault injection: wandbkill at step {step}: ended {', '.join(helpers.values()) or 'nothing'}", flush=True)


def maybe_die(kind: str, step: int) -> None:
    if _hit(kind, step):
        print(f"fault injection: {kind} at step {step}: exiting abruptly", flush=True)
        os._exit(1)
