"""`make bench`: the project's DPO against TRL's DPOTrainer with TRL's defaults, on a ~20M-parameter Llama.

    python launch/bench.py                 # full: 3 alternating rounds of DPO steps, a 4-beta sweep, ZeRO-3 RSS
    python launch/bench.py --quick         # seconds-scale sizes, 1 round (what the tests run); or BENCH_QUICK=1
    python launch/bench.py --only steps    # one part: steps, sweep, rss or profiles
    python launch/bench.py --only profiles # the DPO step at TL;DR / UltraFeedback / HH-RLHF lengths
    python launch/bench.py --only generate # on-policy sampling (N answers per prompt) against generate()
    python launch/bench.py --ablate        # also: each project default against its alternative, alternated
    python launch/bench.py --profile       # also: torch.profiler over the project's DPO step (where time goes)
    python launch/bench.py --rss-scale     # also: the ZeRO-3 RSS comparison on a ~155M-parameter model

Prints a table, then as its LAST line one JSON object:
  dpo_step_ratio    pairs/s of the project's DPO training / pairs/s of trl.DPOTrainer with TRL's defaults
                    (bf16 off: CPU), same model, data and batch, in this process, sides alternated,
                    ratio of the medians over 5 rounds (`--rounds N`). Training steps only: trainer construction
                    (and with it the reference pass on a cache miss) is reported apart, as `construct_s`.
  sweep_cost_ratio  wall time of a 4-beta sweep through the project (`python -m train -m beta.value=...`:
                    SFT once, reference once) / 4 independent runs of the same pipeline with TRL's
                    default trainer settings, each in its own output root (its own SFT and reference).
  mfu               model FLOP/s of the project's DPO steps (train/models/flops.py) / fp32 matmul peak measured
                    here, in this run, next to those steps (best of just before and just after; the
                    best peak of the whole run is `mfu_vs_best_peak`, a lower bound).
  zero3_rss_ratio   peak RSS per rank, deepspeed=zero3 / deepspeed=none, 2 processes, same model.
  profiles          per length profile (tldr, ultrafeedback, hh; launch/bench_profiles.py), at a 32k vocabulary:
                    vs_trl_default, vs_trl_tuned (pairs/s ratios, medians of alternated rounds), ref_pass_speedup,
                    padding_fraction, peak_memory_ratio (launch/bench_profile_runs.py; full mode, or --only profiles).
  generate          per length profile, at a 32k vocabulary: answers/s of train/models/generation.py sample_answers
                    / answers/s of model.generate(num_return_sequences=4) (launch/bench_generate.py; --only generate).
plus the machine, thread counts, versions, rounds and every side's raw figures under `details`.

This file is the command line; the parts live in launch/bench_steps.py (in this process: DPO steps, --ablate,
--profile; the project's trainers from train/trainer/builders.py), launch/bench_runs.py (whole pipelines as
subprocesses: sweep, RSS; the table) and launch/bench_setup.py (sizes, overrides, composing, timing; shared
with launch/gpu_check.py).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script (`python launch/bench.py`): `launch` and `train` from this checkout

from launch.bench_generate import QUICK as GENERATE_QUICK, generation  # noqa: E402
from launch.bench_profile_runs import profiles  # noqa: E402
from launch.bench_runs import format_rows, rss_ratio, sweep_cost  # noqa: E402
from launch.bench_setup import FULL, QUICK, RSS_SCALE  # noqa: E402
from launch.bench_steps import ablations, dpo_steps, profile_steps  # noqa: E402


# --- the machine ---------------------------------------------------------------------------------

def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "platform": platform.platform(),
            # RSS depends on the allocator: glibc's malloc keeps freed memory that jemalloc returns (docs/throughput.md).
            "malloc": os.environ.get("LD_PRELOAD") or "glibc"}


def versions() -> dict:
    names = ("torch", "transformers", "trl", "accelerate", "deepspeed", "datasets")
    return {"python": platform.python_version(), **{n: md.version(n) for n in names}}


def threads() -> dict:
    return {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS")}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    parser.add_argument("--rounds", type=int, help="rounds of alternating DPO-step measurements (default 5, quick 1)")
    parser.add_argument("--only", choices=("steps", "sweep", "rss", "rss_scale", "ablate", "profile", "profiles", "generate"), action="append", help="run only these parts")
    parser.add_argument("--ablate", action="store_true", help="also measure each project default against its alternative")
    parser.add_argument("--profile", action="store_true", help="also profile the project's DPO step (torch.profiler)")
    parser.add_argument("--rss-scale", action="store_true", help="also compare RSS per rank, zero3 vs none, at ~155M parameters")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench", help="work directory (models, runs)")
    opts = parser.parse_args(argv)
    sizes = dict(QUICK if opts.quick else FULL)
    if opts.rounds:
        sizes["rounds"] = opts.rounds
    # The profiles took ~60 min here (2 cores, shared, load 4-16): in the full benchmark, not in --quick (the tests' run).
    default_parts = ("steps", "sweep", "rss") if opts.quick else ("steps", "sweep", "rss", "profiles")
    parts = set(opts.only or default_parts) | ({"ablate"} if opts.ablate else set())
    parts |= {"profile"} if opts.profile else set()
    parts |= {"rss_scale"} if opts.rss_scale else set()
    root = (opts.out / ("quick" if opts.quick else "full")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.perf_counter()
    result = {"dpo_step_ratio": None, "sweep_cost_ratio": None, "mfu": None, "zero3_rss_ratio": None}
    details = {}
    if "steps" in parts:
        details["steps"] = dpo_steps(sizes, root)
        result["dpo_step_ratio"], result["mfu"] = details["steps"]["dpo_step_ratio"], details["steps"]["mfu"]
    if "ablate" in parts:
        details["ablate"] = ablations(sizes, root)
    if "profile" in parts:
        details["profile"] = profile_steps(sizes, root)
    if "sweep" in parts:
        details["sweep"] = sweep_cost(sizes, root)
        result["sweep_cost_ratio"] = details["sweep"]["sweep_cost_ratio"]
    if "rss" in parts:
        details["rss"] = rss_ratio(sizes, root)
        result["zero3_rss_ratio"] = details["rss"]["zero3_rss_ratio"]
    if "profiles" in parts:
        # --quick: one round, one vocabulary, 2 pairs a step; a smoke run of the part, not a measurement.
        details["profiles"] = profiles({"rounds": 1, "vocabs": [None], "batch": 2} if opts.quick else {}, root)
        result["profiles"] = details["profiles"]["profiles"]
    if "generate" in parts:
        details["generate"] = generation({**(GENERATE_QUICK if opts.quick else {}),
                                          **({"rounds": opts.rounds} if opts.rounds else {})}, root)
        result["generate"] = details["generate"]["speedup"]
    if "rss_scale" in parts:
        scale = {**sizes, **RSS_SCALE}
        details["rss_scale"] = rss_ratio(scale, root, name="rss_scale")
        result["zero3_rss_ratio_155m"] = details["rss_scale"]["zero3_rss_ratio"]
    result.update(
        mode="quick" if opts.quick else "full",
        machine=machine(),
        threads=threads(),
        versions=versions(),
        rounds={"dpo_steps": sizes["rounds"], "sweep": sizes["sweep_rounds"], "rss": 1,
                "profiles": details["profiles"]["sizes"]["rounds"] if "profiles" in details else None},  # RSS: not timing, 1 run each
        sizes=sizes,
        wall_s=round(time.perf_counter() - start, 1),
        details=details,
    )
    print(format_rows(result), flush=True)
    print(json.dumps(result, default=float), flush=True)
    return result


if __name__ == "__main__":
    main()
