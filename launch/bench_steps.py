"""The benchmark's in-process parts (launch/bench.py): DPO steps of the project against trl.DPOTrainer with
TRL's defaults, each project default against its alternative (`--ablate`), and a profile (`--profile`).

The project's side is built by the pipeline's own builders (train/trainer/builders.py), so what is measured
is what a run trains with; the baseline is a plain trl.DPOTrainer on purpose."""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from launch.bench_setup import alternate, load_inputs, timing_args, with_peak
from train.models.loading import count_parameters_from_config
from train.trainer.builders import build_dpo_trainer, build_sft_trainer, reference_forward
from train.trainer.throughput import measure_matmul_peak
from train.config.choices import Reference
from train.config.schema import MainConfig
from train.trainer.start_plan import StartPlan


def trl_default_trainer(model_path: str, data, tokenizer, batch: int, steps: int, out: Path, seed: int):
    """trl.DPOTrainer as its docs start it: DPOConfig defaults, except what the benchmark fixes for both
    sides (batch, steps, seed, no saving or reporting) and bf16, which a CPU cannot run."""
    args = DPOConfig(output_dir=str(out), bf16=False, seed=seed, **timing_args(batch, steps))
    return DPOTrainer(model=model_path, args=args, train_dataset=data.train_pairs, processing_class=tokenizer)


def project_trainer(plan: StartPlan, model_path: str, data, tokenizer, batch: int, steps: int, out: Path):
    """The pipeline's own DPO trainer and settings (conf/dpo/default.yaml), from the pipeline's builder."""
    return build_dpo_trainer(plan, model_path, data, tokenizer, out, extra=timing_args(batch, steps))


def sft_trainer(plan: StartPlan, model_path: str, data, tokenizer, batch: int, steps: int, out: Path):
    """The pipeline's SFT trainer and settings (conf/sft/default.yaml), from the pipeline's builder."""
    return build_sft_trainer(plan, model_path, data, tokenizer, out, extra=timing_args(batch, steps))


def dpo_steps(sizes: dict, root: Path) -> dict:
    """TRL's defaults vs the project's, alternated in this process."""
    plan, model_path, tokenizer, data = load_inputs(sizes, root)
    # Cold cache: the first project trainer runs the reference pass, whose cost is reported below.
    shutil.rmtree(root / "ref_cache", ignore_errors=True)
    peaks = [measure_matmul_peak(size=n) for n in (512, 1024, 2048)]
    batch, steps = sizes["batch"], sizes["steps"] + sizes["warmup"]
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        sides = alternate({
            "trl_default": (lambda: trl_default_trainer(model_path, data, tokenizer, batch, steps, Path(tmp) / "t", plan.config.seed), True),
            "project": (lambda: project_trainer(plan, model_path, data, tokenizer, batch, steps, Path(tmp) / "p"),
                        reference_forward(plan.config.dpo)),
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
        "project_settings": {"reference": plan.config.dpo.reference, **{k: plan.config.dpo.args.get(k) for k in ("gradient_checkpointing", "max_length")}},
    }


def ablation_variants(cfg: MainConfig) -> dict[str, list[str]]:
    """One setting at a time changed from the project's defaults: the measured gain of each default."""
    other_reference = "model" if cfg.dpo.reference == Reference.precomputed else "precomputed"
    return {
        "gradient_checkpointing=true": ["dpo.args.gradient_checkpointing=true"],
        f"reference={other_reference}": [f"dpo.reference={other_reference}"],
        # Needs lengths next to the pairs and the column kept for the sampler (with_lengths below).
        "group_by_length": ["+dpo.args.train_sampling_strategy=group_by_length", "+dpo.args.remove_unused_columns=false"],
    }


def with_lengths(data):
    """A `length` column (characters of prompt + longer response) for transformers' LengthGroupedSampler."""
    def text(field) -> str:
        return field if isinstance(field, str) else " ".join(m["content"] for m in field)

    def length(row):
        return {"length": len(text(row["prompt"])) + max(len(text(row["chosen"])), len(text(row["rejected"])))}

    return dataclasses.replace(data, train_pairs=data.train_pairs.map(length))


def ablations(sizes: dict, root: Path) -> dict:
    plan, model_path, tokenizer, data = load_inputs(sizes, root)
    batch, steps, peaks = sizes["batch"], sizes["steps"] + sizes["warmup"], []
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        gc_on = load_inputs(sizes, root, ["sft.args.gradient_checkpointing=true"])[0]
        sft_sides = alternate({
            "sft": (lambda: sft_trainer(plan, model_path, data, tokenizer, batch, steps, Path(tmp) / "s"), False, "sft"),
            "sft gradient_checkpointing=true": (lambda: sft_trainer(gc_on, model_path, data, tokenizer, batch, steps,
                                                                     Path(tmp) / "sg"), False, "sft"),
        }, sizes, peaks)
        builders = {"project": (lambda: project_trainer(plan, model_path, data, tokenizer, batch, steps, Path(tmp) / "p"),
                                reference_forward(plan.config.dpo))}
        for name, overrides in ablation_variants(plan.config).items():
            variant = load_inputs(sizes, root, overrides)[0]
            rows = with_lengths(data) if name == "group_by_length" else data
            builders[name] = (lambda v=variant, d=rows, n=name: project_trainer(v, model_path, d, tokenizer, batch, steps,
                                                                                 Path(tmp) / n), reference_forward(variant.config.dpo))
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


class ProfilerStep(TrainerCallback):
    """Advances a torch.profiler schedule at the end of every training step."""

    def __init__(self, prof):
        self.prof = prof

    def on_step_end(self, *args, **kwargs):
        self.prof.step()


PROFILE_GROUPS = {"matmul (mm/addmm/bmm)": ("aten::mm", "aten::addmm", "aten::bmm"),
                  "attention (sdpa kernels)": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                                               "aten::_scaled_dot_product_flash_attention_for_cpu_backward"),
                  "optimizer (_foreach_*)": ("aten::_foreach_",)}


def profile_steps(sizes: dict, root: Path, steps: int = 3) -> dict:
    """torch.profiler over `steps` project DPO steps (after the warm-up): where a step's time goes."""
    plan, model_path, tokenizer, data = load_inputs(sizes, root)
    prof = profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=sizes["warmup"], warmup=0, active=steps))
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        trainer = project_trainer(plan, model_path, data, tokenizer, sizes["batch"], sizes["warmup"] + steps, Path(tmp) / "p")
        trainer.add_callback(ProfilerStep(prof))
        with prof:
            trainer.train()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    shares = {name: sum(e.self_cpu_time_total for e in events if e.key.startswith(prefixes)) / total
              for name, prefixes in PROFILE_GROUPS.items()}
    shares["everything else"] = 1 - sum(shares.values())
    trace = root / "profile_trace.json"
    prof.export_chrome_trace(str(trace))
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]
    return {"steps": steps, "self_cpu_s_per_step": total / 1e6 / steps, "shares": shares, "trace": str(trace),
            "top_ops": [{"op": e.key, "self_s_per_step": e.self_cpu_time_total / 1e6 / steps, "calls": e.count // steps,
                         "share": e.self_cpu_time_total / total} for e in top],
            "threads": torch.get_num_threads()}
