"""What `python -m train.plan` prints around its table: the rows, the launch command for the recommendation,
why a fitting LoRA row is or is not the recommendation, and the CPU-offload rows the host cannot hold."""

from __future__ import annotations

import shlex
from typing import Optional

from train.memory.candidates import Candidate, lora_note
from train.memory.estimate import GIB

COLUMNS = ("params", "grads", "optimizer", "reference", "activations", "logits", "buffers", "total")
HEADER = (f"{'':5} {'deepspeed':13} {'reference':11} {'ckpt':4} {'mbxga':7} " + " ".join(f"{k[:7]:>7}" for k in COLUMNS)
          + f" {'host':>7}  fits cost")


def row(label: str, c: Candidate) -> str:
    """One table row: the setting, its GB per GPU by part, host GB per node (CPU offload only), fits, cost."""
    s, gb = c.setting, c.memory.gb()
    knobs = f"{s.zero:13} {s.reference:11} {'on' if s.gradient_checkpointing else 'off':4} {s.micro_batch:>3}x{s.grad_accum:<3}"
    host = f"{c.host / GIB:>7.1f}" if c.host else f"{'-':>7}"
    return (f"{label:5} {knobs} " + " ".join(f"{gb[k]:>7.1f}" for k in COLUMNS)
            + f" {host}  {'yes' if c.fits else 'NO':4} {c.cost:5.2f}")


def launch_command(overrides: list[str], gpus_per_node: int, nodes: int) -> str:
    """The make target that starts `overrides` on nodes x gpus_per_node processes: `make train` (NPROC=N goes
    through accelerate launch) on one node, `make submit` (a SLURM job) on several."""
    joined = " ".join(overrides)
    quoted = f'"{joined}"' if not any(ch in joined for ch in '"$`\\!') else shlex.quote(joined)
    args = f" ARGS={quoted}" if overrides else ""
    if nodes > 1:
        return f"make submit NODES={nodes} NPROC_PER_NODE={gpus_per_node}{args}"
    return f"make train{f' NPROC={gpus_per_node}' if gpus_per_node > 1 else ''}{args}"


def recommendation_lines(found: list[Candidate], best: Optional[Candidate], gpus_per_node: int, nodes: int,
                         host_capacity: Optional[int]) -> list[str]:
    """The recommended overrides and their launch command, the LoRA note, and each refused offload row."""
    if best is None:
        lines = ["recommended: nothing fits; more GPUs, a shorter dpo.args.max_length or a smaller model"]
    else:
        processes = gpus_per_node * nodes
        lines = [f"recommended: python -m train {' '.join(best.overrides)}",
                 f"launch: {launch_command(best.overrides, gpus_per_node, nodes)}  ({processes} "
                 f"process{'es' if processes > 1 else ''}: {nodes} node(s) x {gpus_per_node} GPU(s))"]
    note = lora_note(found, best)
    lines += [note] if note else []
    if host_capacity is not None:
        lines += [f"refused: {' '.join(c.overrides) or 'the given config'}: {c.why_not}"
                  for c in found if c.host > host_capacity]
    return lines
