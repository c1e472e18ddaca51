"""`make bench`: the project's DPO against TRL's DPOTrainer with TRL's defaults, on a ~20M-parameter Llama.

    python launch/bench.py                 # full: 3 alternating rounds of DPO steps, a 4-beta sweep, ZeRO-3 RSS
    python launch/bench.py --quick         # seconds-scale sizes, 1 round (what the tests run); or BENCH_QUICK=1
    python launch/bench.py --only steps    # one part: steps, sweep or rss
    python launch/bench.py --ablate        # also: each project default against its alternative, alternated
    python launch/bench.py --profile       # also: torch.profiler over the project's DPO step (where time goes)
    python launch/bench.py --rss-scale     # also: the ZeRO-3 RSS comparison on a ~155M-parameter model

Prints a table, then as its LAST line one JSON object (issue 7):
  dpo_step_ratio    pairs/s of the project's DPO training / pairs/s of trl.DPOTrainer with TRL's defaults
                    (bf16 off: CPU), same model, data and batch, in this process, sides alternated,
                    ratio of the medians over 5 rounds (`--rounds N`). Training steps only: trainer construction
                    (and with it the reference pass on a cache miss) is reported apart, as `construct_s`.
  sweep_cost_ratio  wall time of a 4-beta sweep through the project (`python -m train -m beta.value=...`:
                    SFT once, reference once) / 4 independent runs of the same pipeline with TRL's
                    default trainer settings, each in its own output root (its own SFT and reference).
  mfu               model FLOP/s of the project's DPO steps (train/flops.py) / fp32 matmul peak measured
                    here, in this run, next to those steps (best of just before and just after; the
                    best peak of the whole run is `mfu_vs_best_peak`, a lower bound).
  zero3_rss_ratio   peak RSS per rank, deepspeed=zero3 / deepspeed=none, 2 processes, same model.
plus the machine, thread counts, versions, rounds and every side's raw figures under `details`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# ~19.3M parameters (Llama: 6 layers of width 512, MLP 1376, 8 heads, vocabulary 1024).
MODEL_20M = {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 6, "num_attention_heads": 8}
FULL = {"model": MODEL_20M, "model_dir": "llama-20m", "pairs": 512, "sft_rows": 512, "batch": 32, "steps": 8, "warmup": 2, "rounds": 5,
        "sweep_pairs": 256, "sweep_rows": 256, "sweep_rounds": 3, "betas": [0.05, 0.1, 0.2, 0.5],
        "rss_steps": 12, "rss_batch": 8}
# ~155M parameters (12 layers of width 1024, MLP 2816): `--rss-scale` repeats the RSS comparison where the
# model's states, not the ~550 MB that the imports alone hold per process, make most of a rank's memory.
MODEL_155M = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 12, "num_attention_heads": 16}
RSS_SCALE = {"model": MODEL_155M, "model_dir": "llama-155m", "pairs": 64, "sft_rows": 16, "rss_steps": 4, "rss_batch": 8}
QUICK = {"model": None, "pairs": 96, "sft_rows": 64, "batch": 16, "steps": 4, "warmup": 1, "rounds": 1,
         "sweep_pairs": 64, "sweep_rows": 64, "sweep_rounds": 1, "betas": [0.1, 0.5],
         "rss_steps": 2, "rss_batch": 8}


def model_overrides(sizes: dict, root: Path) -> list[str]:
    """Hydra overrides for the benchmark model: the tiny spec widened to ~20M (or ~155M), built once under `root`."""
    if sizes["model"] is None:
        return [f"model.name_or_path={root / 'models' / 'tiny'}"]
    spec = [f"model.tiny.{k}={v}" for k, v in sizes["model"].items()]
    return [*spec, f"model.name_or_path={root / 'models' / sizes['model_dir']}"]


def data_overrides(pairs: int, rows: int) -> list[str]:
    return ["debug=fast", f"data.synthetic.num_pairs={pairs}", f"data.synthetic.num_sft={rows}",
            "eval.enabled=false", "wandb.enabled=false"]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import train.main  # noqa: F401  (registers the schema and the resolvers)
    from train.config import validate

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides)
    validate(cfg)
    return cfg


# --- DPO steps, in this process ------------------------------------------------------------------

def trl_default_trainer(model_path: str, data, tokenizer, batch: int, steps: int, out: Path, seed: int):
    """trl.DPOTrainer as its docs start it: DPOConfig defaults, except what the benchmark fixes for both
    sides (batch, steps, seed, no saving or reporting) and bf16, which a CPU cannot run."""
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(out), bf16=False, per_device_train_batch_size=batch, max_steps=steps, seed=seed,
                     save_strategy="no", report_to=[], disable_tqdm=True)
    return DPOTrainer(model=model_path, args=args, train_dataset=data.train_pairs, processing_class=tokenizer)


def project_trainer(cfg, model_path: str, data, tokenizer, batch: int, steps: int, out: Path):
    """The pipeline's own DPO trainer and settings (conf/dpo/default.yaml), as train/pipeline.py builds them."""
    from train.config import build_dpo_config
    from train.trainer import dpo_trainer_class

    args = build_dpo_config(cfg, out)
    args.per_device_train_batch_size, args.max_steps = batch, steps
    args.save_strategy, args.report_to, args.disable_tqdm = "no", [], True
    return dpo_trainer_class(cfg)(model=model_path, args=args, train_dataset=data.train_pairs,
                                  eval_dataset=data.test_pairs, processing_class=tokenizer)


def measure_steps(build, reference_forward: bool, batch: int, warmup: int, peak: float, kind: str = "dpo") -> dict:
    """Train with the throughput callback; figures over the steps after `warmup`."""
    from train.throughput import ThroughputCallback

    start = time.perf_counter()
    trainer = build()
    construct_s = time.perf_counter() - start
    callback = ThroughputCallback.attach(trainer, kind, reference_forward=reference_forward)
    trainer.train()
    steps = callback.steps[warmup:]
    seconds = sum(s["seconds"] for s in steps)
    figures = {
        "pairs_per_s": sum(s["sequences"] for s in steps) / seconds,  # rows for SFT
        "tokens_per_s": sum(s["tokens"] for s in steps) / seconds,
        "step_s": statistics.median(s["seconds"] for s in steps),
        "mfu": sum(s["flops"] for s in steps) / seconds / peak,
        "padding_fraction": 1 - sum(s["tokens"] for s in steps) / sum(s["padded_tokens"] for s in steps),
        "construct_s": construct_s,
        "steps_timed": len(steps),
        "pairs_per_step": batch,
    }
    del trainer, callback
    gc.collect()
    return figures


def load_inputs(sizes: dict, root: Path, extra: list[str] = ()):
    """The composed config, the benchmark model (built once) and its tokenizer, and the preference data."""
    from train.data import load_preference_data
    from train.models import ensure_base_model, load_tokenizer

    cfg = compose([*model_overrides(sizes, root), *data_overrides(sizes["pairs"], sizes["sft_rows"]),
                   f"output_root={root}", "sft.enabled=false", *extra])
    model_path = ensure_base_model(cfg)
    tokenizer = load_tokenizer(cfg, model_path)
    return cfg, model_path, tokenizer, load_preference_data(cfg, tokenizer)


def alternate(builders: dict, sizes: dict, peaks: list[float]) -> dict[str, list[dict]]:
    """Each side once per round; the order reverses every round, so no side always runs on a warmer or
    cooler machine. The matmul peak is re-measured before every side."""
    from train.throughput import measure_matmul_peak

    names, sides = list(builders), {name: [] for name in builders}
    for r in range(sizes["rounds"]):
        for name in names if r % 2 == 0 else names[::-1]:
            before = measure_matmul_peak(size=1024)
            build, reference_forward, *kind = builders[name]
            run = measure_steps(build, reference_forward, sizes["batch"], sizes["warmup"], 1.0, *kind)
            # This machine's speed drifts over minutes (shared host): each side's MFU is also taken against
            # the peak measured next to it, the better of just before and just after.
            run["local_peak_flops"] = max(before, measure_matmul_peak(size=1024))
            run["mfu_local"] = run["mfu"] / run["local_peak_flops"]
            peaks += [before, run["local_peak_flops"]]
            sides[name].append(run)
            print(f"bench: round {r + 1} {name}: {run['pairs_per_s']:.2f} pairs/s", flush=True)
    return sides


def with_peak(sides: dict, peaks: list[float]) -> float:
    peak = max(peaks)
    for runs in sides.values():
        for run in runs:
            run["mfu"] /= peak  # measure_steps divided by 1.0: now by the best peak seen in this run
    return peak


def reference_forward(cfg) -> bool:
    return cfg.dpo.reference != "precomputed"


def dpo_steps(sizes: dict, root: Path) -> dict:
    """TRL's defaults vs the project's, alternated in this process."""
    from train.distributed import count_parameters_from_config
    from train.throughput import measure_matmul_peak

    cfg, model_path, tokenizer, data = load_inputs(sizes, root)
    # Cold cache: the first project trainer runs the reference pass, whose cost is reported below.
    shutil.rmtree(root / "ref_cache", ignore_errors=True)
    peaks = [measure_matmul_peak(size=n) for n in (512, 1024, 2048)]
    batch, steps = sizes["batch"], sizes["steps"] + sizes["warmup"]
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        sides = alternate({
            "trl_default": (lambda: trl_default_trainer(model_path, data, tokenizer, batch, steps, Path(tmp) / "t", cfg.seed), True),
            "project": (lambda: project_trainer(cfg, model_path, data, tokenizer, batch, steps, Path(tmp) / "p"),
                        reference_forward(cfg)),
        }, sizes, peaks)
    peak = with_peak(sides, peaks)
    ratios = [p["pairs_per_s"] / t["pairs_per_s"] for t, p in zip(sides["trl_default"], sides["project"])]
    project, trl = (statistics.median(r["pairs_per_s"] for r in sides[k]) for k in ("project", "trl_default"))
    # The reference pass over the training pairs, as the cache recorded it (0 with reference=model).
    passes = [json.loads(p.read_text()) for p in (root / "ref_cache").glob("*.json") if not p.name.startswith("weights-")]
    reference_pass_s = max((m["compute_s"] for m in passes), default=0.0)
    pairs = len(data.train_pairs)
    return {
        "peak_flops": peak,
        "sides": sides,
        "paired_ratios": ratios,
        "dpo_step_ratio": project / trl,
        # One epoch of a single run with a cold cache: the reference pass paid in full, not shared by a sweep.
        "reference_pass_s": reference_pass_s,
        "train_pairs": pairs,
        "single_run_epoch_ratio": (pairs / trl) / (pairs / project + reference_pass_s),
        "mfu": statistics.median(p["mfu_local"] for p in sides["project"]),
        "mfu_vs_best_peak": statistics.median(p["mfu"] for p in sides["project"]),
        "model_parameters": count_parameters_from_config(model_path, False),
        "project_settings": {"reference": cfg.dpo.reference, **{k: cfg.dpo.args.get(k) for k in ("gradient_checkpointing", "max_length")}},
    }


def ablation_variants(cfg) -> dict[str, list[str]]:
    """One setting at a time changed from the project's defaults: the measured gain of each default."""
    other_reference = "model" if cfg.dpo.reference == "precomputed" else "precomputed"
    return {
        "gradient_checkpointing=true": ["dpo.args.gradient_checkpointing=true"],
        f"reference={other_reference}": [f"dpo.reference={other_reference}"],
        # Needs lengths next to the pairs and the column kept for the sampler (with_lengths below).
        "group_by_length": ["+dpo.args.train_sampling_strategy=group_by_length", "+dpo.args.remove_unused_columns=false"],
    }


def with_lengths(data):
    """A `length` column (characters of prompt + longer response) for transformers' LengthGroupedSampler."""
    import dataclasses

    def text(field) -> str:
        return field if isinstance(field, str) else " ".join(m["content"] for m in field)

    def length(row):
        return {"length": len(text(row["prompt"])) + max(len(text(row["chosen"])), len(text(row["rejected"])))}

    return dataclasses.replace(data, train_pairs=data.train_pairs.map(length))


def sft_trainer(cfg, model_path: str, data, tokenizer, batch: int, steps: int, out: Path):
    """The pipeline's SFT trainer and settings (conf/sft/default.yaml), as train/pipeline.py builds them."""
    from trl import SFTTrainer

    from train.config import build_sft_config

    args = build_sft_config(cfg, out)
    args.per_device_train_batch_size, args.max_steps = batch, steps
    args.report_to, args.disable_tqdm = [], True
    return SFTTrainer(model=model_path, args=args, train_dataset=data.sft, processing_class=tokenizer)


def ablations(sizes: dict, root: Path) -> dict:
    cfg, model_path, tokenizer, data = load_inputs(sizes, root)
    batch, steps, peaks = sizes["batch"], sizes["steps"] + sizes["warmup"], []
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        gc_on = load_inputs(sizes, root, ["sft.args.gradient_checkpointing=true"])[0]
        sft_sides = alternate({
            "sft": (lambda: sft_trainer(cfg, model_path, data, tokenizer, batch, steps, Path(tmp) / "s"), False, "sft"),
            "sft gradient_checkpointing=true": (lambda: sft_trainer(gc_on, model_path, data, tokenizer, batch, steps,
                                                                     Path(tmp) / "sg"), False, "sft"),
        }, sizes, peaks)
        builders = {"project": (lambda: project_trainer(cfg, model_path, data, tokenizer, batch, steps, Path(tmp) / "p"),
                                reference_forward(cfg))}
        for name, overrides in ablation_variants(cfg).items():
            variant = load_inputs(sizes, root, overrides)[0]
            rows = with_lengths(data) if name == "group_by_length" else data
            builders[name] = (lambda v=variant, d=rows, n=name: project_trainer(v, model_path, d, tokenizer, batch, steps,
                                                                                 Path(tmp) / n), reference_forward(variant))
        sides = alternate(builders, sizes, peaks)
    with_peak({**sides, **sft_sides}, peaks)
    base = {name: statistics.median(r["pairs_per_s"] for r in sides["project"]) for name in sides}
    base.update({name: statistics.median(r["pairs_per_s"] for r in sft_sides["sft"]) for name in sft_sides})
    sides.update(sft_sides)
    return {name: {"pairs_per_s": statistics.median(r["pairs_per_s"] for r in runs),
                   "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
                   "padding_fraction": statistics.median(r["padding_fraction"] for r in runs),
                   "project_default_speedup": base[name] / statistics.median(r["pairs_per_s"] for r in runs), "runs": runs}
            for name, runs in sides.items()}


def profile_steps(sizes: dict, root: Path, steps: int = 3) -> dict:
    """torch.profiler over `steps` project DPO steps (after the warm-up): where a step's time goes."""
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule
    from transformers import TrainerCallback

    cfg, model_path, tokenizer, data = load_inputs(sizes, root)
    prof = profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=sizes["warmup"], warmup=0, active=steps))

    class Step(TrainerCallback):
        def on_step_end(self, *args, **kwargs):
            prof.step()

    with tempfile.TemporaryDirectory(dir=root) as tmp:
        trainer = project_trainer(cfg, model_path, data, tokenizer, sizes["batch"], sizes["warmup"] + steps, Path(tmp) / "p")
        trainer.add_callback(Step())
        with prof:
            trainer.train()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    groups = {"matmul (mm/addmm/bmm)": ("aten::mm", "aten::addmm", "aten::bmm"),
              "attention (sdpa kernels)": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                                           "aten::_scaled_dot_product_flash_attention_for_cpu_backward"),
              "optimizer (_foreach_*)": ("aten::_foreach_",)}
    shares = {name: sum(e.self_cpu_time_total for e in events if e.key.startswith(prefixes)) / total
              for name, prefixes in groups.items()}
    shares["everything else"] = 1 - sum(shares.values())
    trace = root / "profile_trace.json"
    prof.export_chrome_trace(str(trace))
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]
    return {"steps": steps, "self_cpu_s_per_step": total / 1e6 / steps, "shares": shares, "trace": str(trace),
            "top_ops": [{"op": e.key, "self_s_per_step": e.self_cpu_time_total / 1e6 / steps, "calls": e.count // steps,
                         "share": e.self_cpu_time_total / total} for e in top],
            "threads": torch.get_num_threads()}


# --- the machine ---------------------------------------------------------------------------------

def machine() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "platform": platform.platform(),
            # RSS depends on the allocator: glibc's malloc keeps freed memory that jemalloc returns (README, Throughput).
            "malloc": os.environ.get("LD_PRELOAD") or "glibc"}


def versions() -> dict:
    import importlib.metadata as md

    names = ("torch", "transformers", "trl", "accelerate", "deepspeed", "datasets")
    return {"python": platform.python_version(), **{n: md.version(n) for n in names}}


def threads() -> dict:
    import torch

    return {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS")}


# --- report --------------------------------------------------------------------------------------

def table(result: dict) -> str:
    from launch.bench_runs import format_rows

    return format_rows(result)


def main(argv: list[str] | None = None) -> dict:
    from launch.bench_runs import rss_ratio, sweep_cost

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    parser.add_argument("--rounds", type=int, help="rounds of alternating DPO-step measurements (default 5, quick 1)")
    parser.add_argument("--only", choices=("steps", "sweep", "rss", "rss_scale", "ablate", "profile"), action="append", help="run only these parts")
    parser.add_argument("--ablate", action="store_true", help="also measure each project default against its alternative")
    parser.add_argument("--profile", action="store_true", help="also profile the project's DPO step (torch.profiler)")
    parser.add_argument("--rss-scale", action="store_true", help="also compare RSS per rank, zero3 vs none, at ~155M parameters")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench", help="work directory (models, runs)")
    opts = parser.parse_args(argv)
    sizes = dict(QUICK if opts.quick else FULL)
    if opts.rounds:
        sizes["rounds"] = opts.rounds
    parts = set(opts.only or ("steps", "sweep", "rss")) | ({"ablate"} if opts.ablate else set())
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
        details["sweep"] = sweep_cost(sizes, root, model_overrides(sizes, root), data_overrides)
        result["sweep_cost_ratio"] = details["sweep"]["sweep_cost_ratio"]
    if "rss" in parts:
        details["rss"] = rss_ratio(sizes, root, model_overrides(sizes, root), data_overrides)
        result["zero3_rss_ratio"] = details["rss"]["zero3_rss_ratio"]
    if "rss_scale" in parts:
        scale = {**sizes, **RSS_SCALE}
        details["rss_scale"] = rss_ratio(scale, root, model_overrides(scale, root), data_overrides, name="rss_scale")
        result["zero3_rss_ratio_155m"] = details["rss_scale"]["zero3_rss_ratio"]
    result.update(
        mode="quick" if opts.quick else "full",
        machine=machine(),
        threads=threads(),
        versions=versions(),
        rounds={"dpo_steps": sizes["rounds"], "sweep": sizes["sweep_rounds"], "rss": 1},  # RSS: not timing, 1 run each
        sizes=sizes,
        wall_s=round(time.perf_counter() - start, 1),
        details=details,
    )
    print(table(result), flush=True)
    print(json.dumps(result, default=float), flush=True)
    return result


if __name__ == "__main__":
    main()
