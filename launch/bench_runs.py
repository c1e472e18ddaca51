"""The benchmark's whole-pipeline parts (subprocesses, as a user runs them) and its table (launch/bench.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from launch.bench_generate import generation_rows
from launch.bench_profile_runs import profile_rows
from launch.bench_setup import REPO, compose, data_overrides, model_overrides
from train.models.loading import ensure_base_model
from train.runtime.distributed import free_port

# The speed settings where the project's defaults (conf/dpo, conf/sft) differ from TRL's: the baseline
# puts TRL's back. Learning rates, epochs, batch sizes and schedules define the experiment and stay equal.
TRL_DEFAULTS = [
    "dpo.reference=model",                      # DPOConfig.precompute_ref_log_probs=False: reference forward every step
    "dpo.args.gradient_checkpointing=true",     # DPOConfig/SFTConfig default
    "sft.args.gradient_checkpointing=true",
    "dpo.args.max_length=1024",                 # TRL's default lengths (the data is shorter: no truncation either way)
    "sft.args.max_length=1024",
    "dpo.args.logging_steps=10",
    "sft.args.logging_steps=10",
]


def run(cmd: list[str], log: Path, timeout: int = 3600) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    if proc.returncode != 0:
        raise RuntimeError(f"bench: {' '.join(cmd[:6])} ... failed ({proc.returncode}); log: {log}\n{proc.stderr[-2000:]}")
    return seconds, proc


def results_of(proc: subprocess.CompletedProcess) -> list[dict]:
    paths = [line.removeprefix("results: ") for line in proc.stdout.splitlines() if line.startswith("results: ")]
    return [json.loads(Path(p).read_text()) for p in dict.fromkeys(paths)]


def prebuild_model(root: Path, model: list[str]) -> None:
    """Build the base model before any timing: it is the benchmark's input, not part of a pipeline run."""
    ensure_base_model(compose([*model, *data_overrides(16, 16), f"output_root={root}"]).config.model)


def sweep_cost(sizes: dict, root: Path) -> dict:
    """One 4-beta sweep through the project vs 4 independent TRL-default runs, alternating which goes first."""
    model = model_overrides(sizes, root)
    prebuild_model(root, model)
    betas = sizes["betas"]
    common = [*model, *data_overrides(sizes["sweep_pairs"], sizes["sweep_rows"]), "checkpoint.every_steps=0"]
    rounds = []
    for r in range(sizes["sweep_rounds"]):
        base = root / "sweep" / f"round{r}"
        shutil.rmtree(base, ignore_errors=True)  # nothing reused from an earlier benchmark: SFT and reference from scratch
        sides = {}
        for side in (["project", "trl_default"] if r % 2 == 0 else ["trl_default", "project"]):
            if side == "project":
                cmd = [sys.executable, "-m", "train", "-m", f"beta.value={','.join(map(str, betas))}",
                       f"output_root={base / 'project'}", "hydra.sweep.subdir=beta_${beta.value}", *common]
                seconds, proc = run(cmd, root / "logs" / f"sweep{r}-project.log")
                stages = results_of(proc)
            else:
                seconds, stages = 0.0, []
                for i, beta in enumerate(betas):
                    cmd = [sys.executable, "-m", "train", f"beta.value={beta}", f"output_root={base / f'trl{i}'}",
                           f"hydra.run.dir={base / f'trl{i}' / 'run'}", *common, *TRL_DEFAULTS]
                    s, proc = run(cmd, root / "logs" / f"sweep{r}-trl{i}.log")
                    seconds += s
                    stages += results_of(proc)
            sides[side] = {"wall_s": seconds, "sft_s": sum(x["runtime_s"].get("sft", 0) for x in stages),
                           "dpo_s": sum(x["runtime_s"].get("dpo", 0) for x in stages), "runs": len(stages)}
            print(f"bench: sweep round {r + 1} {side}: {seconds:.1f} s", flush=True)
        rounds.append(sides)
    ratios = [x["project"]["wall_s"] / x["trl_default"]["wall_s"] for x in rounds]
    stage_ratios = [(x["project"]["sft_s"] + x["project"]["dpo_s"]) / (x["trl_default"]["sft_s"] + x["trl_default"]["dpo_s"])
                    for x in rounds]
    return {"rounds": rounds, "betas": betas, "sweep_cost_ratio": sorted(ratios)[len(ratios) // 2],
            "stage_time_ratio": sorted(stage_ratios)[len(stage_ratios) // 2], "trl_default_overrides": TRL_DEFAULTS}


def rss_ratio(sizes: dict, root: Path, stages=("none", "zero3"), extra: tuple = (), name: str = "rss") -> dict:
    """Peak RSS per rank of a 2-process DPO run (SFT off, the base model as policy and reference)."""
    model = model_overrides(sizes, root)
    prebuild_model(root, model)
    accelerate = str(Path(sys.executable).parent / "accelerate")
    figures = {}
    for stage in stages:
        work = root / name / stage
        shutil.rmtree(work, ignore_errors=True)  # a fresh run: reference pass included
        cmd = [accelerate, "launch", "--config_file", str(REPO / "launch/accelerate/single_node.yaml"),
               "--num_processes", "2", "--main_process_port", str(free_port()), "-m", "train",
               f"output_root={work}", f"hydra.run.dir={work / 'run'}", *model, *data_overrides(sizes["pairs"], sizes["sft_rows"]),
               "sft.enabled=false", f"deepspeed={stage}", f"+dpo.args.max_steps={sizes['rss_steps']}",
               f"dpo.args.per_device_train_batch_size={sizes['rss_batch']}", "checkpoint.every_steps=0",
               "dpo.args.logging_steps=1", *extra]
        _, proc = run(cmd, root / "logs" / f"{name}-{stage}.log")
        results = results_of(proc)[0]
        ranks = results["distributed"]["ranks"]
        figures[stage] = {
            "peak_rss_mb": [r["peak_rss_mb"] for r in ranks],  # whole process, end of the DPO stage (save included)
            # The largest rank's high-water mark after the last training step: training only (ThroughputCallback).
            "training_peak_rss_mb": results["dpo"]["history"][-1]["throughput/peak_memory_mb"],
            "policy_params_local": [r["policy_params_local"] for r in ranks],
        }
        print(f"bench: {name} {stage}: {figures[stage]['peak_rss_mb']} MB", flush=True)
    mean = {s: sum(f["peak_rss_mb"]) / len(f["peak_rss_mb"]) for s, f in figures.items()}
    base = import_rss_mb(sizes.get("import_runs", 2))
    training = {s: f["training_peak_rss_mb"] for s, f in figures.items()}
    return {**figures, "import_rss_mb": base, "model_parameters": figures["none"]["policy_params_local"][0], "zero3_rss_ratio": mean["zero3"] / mean["none"],
            "training_rss_ratio": training["zero3"] / training["none"],
            "above_imports_ratio": (training["zero3"] - base) / (training["none"] - base)}


def import_rss_mb(runs: int = 2) -> float:
    """RSS of a process that has only imported what a DPO run imports: the floor under every rank; the lower of
    `runs` processes (a first import may also compile bytecode)."""
    code = ("import deepspeed, trl, train.main, train.pipeline.run; from trl import DPOTrainer; "
            "from train.core.memory import peak_rss_mb; print(peak_rss_mb())")
    procs = [subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
             for _ in range(runs)]
    return min(float(proc.stdout.strip().splitlines()[-1]) for proc in procs)


def format_rows(result: dict) -> str:
    d = result["details"]
    lines = [f"bench ({result['mode']}): {result['machine']['cpu']}, {result['machine']['cores']} cores, "
             f"torch threads {result['threads']['torch_threads']}, trl {result['versions']['trl']}, "
             f"torch {result['versions']['torch']}, malloc {Path(result['machine']['malloc']).name}", ""]
    if "steps" in d:
        s = d["steps"]
        lines += [f"DPO steps: {s['model_parameters'] / 1e6:.1f}M-parameter Llama, batch {s['sides']['project'][0]['pairs_per_step']} "
                  f"pairs, {result['rounds']['dpo_steps']} alternating round(s), peak fp32 matmul {s['peak_flops'] / 1e9:.0f} GFLOP/s",
                  f"  {'side':<12} {'pairs/s':>8} {'tokens/s':>9} {'step s':>7} {'MFU':>6} {'MFU*':>6} {'padding':>8} {'construct s':>12}"]
        for side, runs in s["sides"].items():
            for i, r in enumerate(runs):
                lines.append(f"  {side if i == 0 else '':<12} {r['pairs_per_s']:8.2f} {r['tokens_per_s']:9.0f} "
                             f"{r['step_s']:7.2f} {r.get('mfu_local', r['mfu']):6.3f} {r['mfu']:6.3f} "
                             f"{r['padding_fraction']:8.1%} {r['construct_s']:12.1f}")
        lines.append(f"  MFU: against the peak measured next to the side; MFU*: against the run's best peak")
        lines.append(f"  paired ratios {', '.join(f'{x:.2f}' for x in s['paired_ratios'])}; project: {s['project_settings']}")
        lines.append(f"  reference pass over the {s['train_pairs']} training pairs: "
                     f"{s['reference_pass_s']:.1f} s once; one epoch of a single run, pass included: "
                     f"{s['single_run_epoch_ratio']:.2f}x TRL's defaults")
    if "ablate" in d:
        lines += ["", "Project defaults, each against its alternative (alternating rounds, medians; SFT in rows/s):",
                  f"  {'variant':<32} {'pairs/s':>8} {'tokens/s':>9} {'padding':>8} {'default is faster by':>21}"]
        for name, a in d["ablate"].items():
            lines.append(f"  {name:<32} {a['pairs_per_s']:8.2f} {a['tokens_per_s']:9.0f} {a['padding_fraction']:8.1%} "
                         f"{a['project_default_speedup']:20.2f}x")
    if "profile" in d:
        pr = d["profile"]
        lines += ["", f"Profile of the project's DPO step (torch.profiler, {pr['steps']} steps, {pr['threads']} threads): "
                  f"{pr['self_cpu_s_per_step']:.2f} s of op time per step; trace {pr['trace']}",
                  "  " + "; ".join(f"{k} {v:.0%}" for k, v in pr["shares"].items())]
        lines += [f"  {op['op'][:58]:<58} {op['self_s_per_step']:7.3f} s {op['share']:6.1%} x{op['calls']}" for op in pr["top_ops"]]
    if "sweep" in d:
        w = d["sweep"]
        lines += ["", f"Sweep of {len(w['betas'])} betas (SFT + DPO, eval off), wall s per round:"]
        for i, rnd in enumerate(w["rounds"]):
            lines.append(f"  round {i + 1}: project {rnd['project']['wall_s']:.1f} (sft {rnd['project']['sft_s']:.1f}, dpo "
                         f"{rnd['project']['dpo_s']:.1f}); trl defaults {rnd['trl_default']['wall_s']:.1f} (sft "
                         f"{rnd['trl_default']['sft_s']:.1f}, dpo {rnd['trl_default']['dpo_s']:.1f})")
    for key in ("rss", "rss_scale"):
        if key not in d:
            continue
        r = d[key]
        lines += ["", f"Peak RSS per rank, 2 processes, {r['model_parameters'] / 1e6:.1f}M parameters: " + "; ".join(
            f"{stage} {', '.join(f'{x:.0f}' for x in r[stage]['peak_rss_mb'])} MB" for stage in ("none", "zero3")),
            f"  training steps only (largest rank): none {r['none']['training_peak_rss_mb']:.0f} MB, zero3 "
            f"{r['zero3']['training_peak_rss_mb']:.0f} MB (ratio {r['training_rss_ratio']:.2f}); imports alone "
            f"{r['import_rss_mb']:.0f} MB; above the imports: ratio {r['above_imports_ratio']:.2f}"]
    if "profiles" in d:
        lines += profile_rows(d["profiles"])
    if "generate" in d:
        lines += generation_rows(d["generate"])
    lines += ["", f"  dpo_step_ratio {fmt(result['dpo_step_ratio'])} (target >= 1.3)   sweep_cost_ratio "
              f"{fmt(result['sweep_cost_ratio'])} (<= 0.65)   mfu {fmt(result['mfu'])} (>= 0.4)   zero3_rss_ratio "
              f"{fmt(result['zero3_rss_ratio'])} (<= 0.7)"
              + (f"   zero3_rss_ratio_155m {fmt(result['zero3_rss_ratio_155m'])}" if "zero3_rss_ratio_155m" in result else "")
              + f"   [{result['wall_s']:.0f} s]"]
    return "\n".join(lines)


def fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"
