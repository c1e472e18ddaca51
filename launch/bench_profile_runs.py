"""`make bench ARGS="--only profiles"`: the DPO step at real length profiles (launch/bench_profiles.py),
three sides alternated in this process, on the ~20M Llama at the tokenizer's vocabulary and at 32k:

    trl_default  trl.DPOTrainer at DPOConfig's defaults (reference model forward every step, gradient
                 checkpointing on, padded), bf16 off (CPU)
    trl_tuned    trl.DPOTrainer with the best a TRL user can set: precompute_ref_log_probs=True,
                 gradient_checkpointing=False
    project      the pipeline's own builder (train/trainer/builders.py build_dpo_trainer) with the project's
                 defaults (conf/dpo/default.yaml, dpo.batching included), at max_length 1024 like the others

Every side gets the same pairs, batch, seed and max_length. Each round runs the three sides one after the other,
in an order reversed every round; a ratio is the median over rounds of the ratio within a round. Figures:
  pairs/s               pairs of the timed steps / their wall time (data loading and optimizer included)
  ref_pass_s            TRL's reference pass over the training pairs (precompute_ref_log_probs), timed
                        around TRL's own pass (train/seams.py ReferencePassHook for TRL; the project's cache
                        records the same span as compute_s), cold every time
  step_peak_alloc_mb    peak bytes held by torch's CPU allocator during one training step, above what was held
                        when the step began (torch.profiler profile_memory "[memory]" events, "Total Allocated"),
                        in the first round only, on an extra step after the timed ones. RSS would hide it: glibc
                        keeps freed pages, so a process's RSS after warm-up hardly moves with the step's needs.
  padding_fraction      positions of the decoder's training forwards that hold no token (pad id) / all positions
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import AutoModelForCausalLM, TrainerCallback
from trl import DPOConfig, DPOTrainer

from launch.bench_profiles import MAX_LENGTH, PROFILES, draw_lengths, length_summary, make_pairs, single_token_words
from launch.bench_setup import MODEL_20M, compose, data_overrides, model_overrides, timing_args
from train import seams
from train.config.schema import MainConfig
from train.console.progress import ConsoleLogCallback
from train.models.loading import ensure_base_model, load_tokenizer
from train.trainer.builders import build_dpo_trainer
from train.trainer.layouts import TRL_LAYOUT
from train.trainer.start_plan import StartPlan

# RoPE positions up to TRL's max_length; otherwise the ~20M Llama of `make bench`. 32k first: the headline figures.
# A TL;DR step of TRL's defaults at 32k is ~10 s of the 2 cores: 1 timed step per side and round keeps the part
# at ~40 min on an idle machine (the first step of each side, optimizer state and all, is not timed).
SIZES = {"model": {**MODEL_20M, "max_position_embeddings": MAX_LENGTH}, "model_dir": "llama-20m-1k",
         "batch": 2, "warmup": 1, "steps": 1, "rounds": 3, "vocabs": [32000, None]}
SIDES = ("trl_default", "trl_tuned", "project")


class TimedReferencePass(seams.ReferencePassHook, DPOTrainer):
    """trl.DPOTrainer unchanged, with the seconds of its reference pass recorded."""

    def reference_pass(self, compute, dataset, name, batch_size):
        start = time.perf_counter()
        result = compute(dataset, name, batch_size)
        self.reference_pass_s = getattr(self, "reference_pass_s", 0.0) + time.perf_counter() - start
        return result


class StepProbe(TrainerCallback):
    """Seconds per optimizer step, positions and pad positions of the training forwards, and the allocator
    peak of step `memory_step` (1-based; 0: none)."""

    def __init__(self, pad_id: int, memory_step: int, trace: Path):
        self.pad_id, self.memory_step, self.trace = pad_id, memory_step, trace
        self.seconds, self.positions, self.pads, self.step_peak_mb = [], 0, 0, None
        self._prof = None
        self._last = 0.0

    def count(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None or not (module.training and torch.is_grad_enabled()):
            return
        mask = kwargs.get("attention_mask")
        real = int(mask.sum()) if mask is not None and mask.dim() == 2 else int((ids != self.pad_id).sum())
        self.positions += ids.numel()
        self.pads += ids.numel() - real

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.memory_step:
            self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._prof.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if self._prof is not None:
            self._prof.__exit__(None, None, None)
            self._prof.export_chrome_trace(str(self.trace))
            events = json.loads(self.trace.read_text())["traceEvents"]
            self.step_peak_mb = max((e["args"].get("Total Allocated", 0) for e in events if e.get("name") == "[memory]"),
                                    default=0) / 2**20
            self.trace.unlink()
            self._prof = None
        now = time.perf_counter()
        self.seconds.append(now - self._last)
        self._last = time.perf_counter()  # the profiler's export is not part of the next step


def wide_vocab_model(base: str, vocab: int, path: Path, tokenizer) -> str:
    """The base model with its (tied) embeddings grown to `vocab` rows: the LM head and log-softmax of a
    realistic vocabulary; the extra rows are never a target (the text uses the tokenizer's tokens)."""
    if not (path / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(base)
        torch.manual_seed(0)
        model.resize_token_embeddings(vocab, mean_resizing=False)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return str(path)


def build_side(side: str, plan: StartPlan, model_path: str, pairs, tokenizer, out: Path, batch: int, steps: int):
    cfg = plan.config
    common = dict(output_dir=str(out), bf16=False, seed=cfg.seed, max_length=MAX_LENGTH, **timing_args(batch, steps))
    if side == "trl_default":
        return DPOTrainer(model=model_path, args=DPOConfig(**common), train_dataset=pairs, processing_class=tokenizer)
    if side == "trl_tuned":
        args = DPOConfig(**common, precompute_ref_log_probs=True, gradient_checkpointing=False)
        return TimedReferencePass(model=model_path, args=args, train_dataset=pairs, processing_class=tokenizer)
    shutil.rmtree(Path(cfg.output_root) / "ref_cache", ignore_errors=True)  # cold: the pass is measured every round
    data = SimpleNamespace(train_pairs=pairs, test_pairs=None)
    return build_dpo_trainer(plan, model_path, data, tokenizer, out, extra=timing_args(batch, steps))


def project_pass_s(cfg: MainConfig) -> float | None:
    metas = [json.loads(p.read_text()) for p in (Path(cfg.output_root) / "ref_cache").glob("*.json")
             if not p.name.startswith("weights-")]
    return max((m["compute_s"] for m in metas), default=None)


def run_side(side: str, plan: StartPlan, model_path: str, pairs, tokenizer, work: Path, sizes: dict, memory: bool) -> dict:
    batch, timed = sizes["batch"], sizes["warmup"] + sizes["steps"]
    # A fresh fingerprint: TRL caches reference log-probs by the dataset's, so a repeated side would skip its pass.
    pairs = pairs.map(lambda row: row, new_fingerprint=uuid.uuid4().hex)
    start = time.perf_counter()
    trainer = build_side(side, plan, model_path, pairs, tokenizer, work / side, batch, timed + memory)
    construct_s = time.perf_counter() - start
    probe = StepProbe(tokenizer.pad_token_id, timed + 1 if memory else 0, work / f"{side}-trace.json")
    trainer.add_callback(probe)
    ConsoleLogCallback.attach(trainer, side)  # TRL's sides too: a line per step, not transformers' dict
    # On the decoder: it sees the layout's rows (train/trainer/logps.py runs the backbone on them), not TRL's batch.
    trainer.model.get_decoder().register_forward_pre_hook(probe.count, with_kwargs=True)
    trainer.train()
    seconds = probe.seconds[sizes["warmup"]:timed]
    figures = {"pairs_per_s": batch * len(seconds) / sum(seconds), "step_s": statistics.median(seconds),
               "construct_s": construct_s, "padding_fraction": probe.pads / probe.positions,
               "ref_pass_s": getattr(trainer, "reference_pass_s", None) if side != "project" else project_pass_s(plan.config),
               "step_peak_alloc_mb": probe.step_peak_mb, "loadavg": open("/proc/loadavg").read().split()[:3],
               # what dpo.batching resolved to; TRL's own sides have no layout of ours: they run TRL's batch
               "layout": getattr(trainer, "batch_layout", None) or TRL_LAYOUT}
    del trainer
    return figures


def median_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r[key] is not None]
    return statistics.median(values) if values else None


def paired(sides: dict[str, list[dict]], key: str, num: str, den: str) -> float | None:
    """Median over rounds of num/den, each ratio of two runs of the same round (next to each other in time):
    steadier than a ratio of medians on a shared machine whose load drifts between rounds."""
    ratios = [a[key] / b[key] for a, b in zip(sides[num], sides[den]) if a[key] and b[key]]
    return statistics.median(ratios) if ratios else None


def summarize(sides: dict[str, list[dict]]) -> dict:
    return {"vs_trl_default": paired(sides, "pairs_per_s", "project", "trl_default"),
            "vs_trl_tuned": paired(sides, "pairs_per_s", "project", "trl_tuned"),
            "ref_pass_speedup": paired(sides, "ref_pass_s", "trl_tuned", "project"),
            "padding_fraction": median_of(sides["project"], "padding_fraction"),
            "peak_memory_ratio": paired(sides, "step_peak_alloc_mb", "project", "trl_tuned"),
            # the same figures as ratios of the medians over rounds
            "of_medians": {"vs_trl_default": ratio_of_medians(sides, "pairs_per_s", "project", "trl_default"),
                           "vs_trl_tuned": ratio_of_medians(sides, "pairs_per_s", "project", "trl_tuned"),
                           "ref_pass_speedup": ratio_of_medians(sides, "ref_pass_s", "trl_tuned", "project")}}


def ratio_of_medians(sides: dict[str, list[dict]], key: str, num: str, den: str) -> float | None:
    a, b = median_of(sides[num], key), median_of(sides[den], key)
    return a / b if a and b else None


def profiles(sizes: dict, root: Path, names: tuple = tuple(PROFILES)) -> dict:
    """Every profile at every vocabulary: three sides per round, the order reversed every round."""
    sizes = {**SIZES, **sizes}
    plan = compose([*model_overrides(sizes, root), *data_overrides(16, 16), f"output_root={root / 'profiles'}",
                    "sft.enabled=false", f"dpo.args.max_length={MAX_LENGTH}"])
    cfg = plan.config
    base = ensure_base_model(cfg.model)
    tokenizer = load_tokenizer(cfg.model, base, cfg.data.conversational)
    words = single_token_words(tokenizer)
    n_pairs = sizes["batch"] * (sizes["warmup"] + sizes["steps"] + 1)
    result = {"sizes": sizes, "batching": cfg.dpo.batching, "words": len(words), "by_vocab": {}}
    for vocab in sizes["vocabs"]:
        model_path = base if vocab is None else wide_vocab_model(base, vocab, root / "models" / f"{sizes['model_dir']}-v{vocab}", tokenizer)
        label = str(vocab or len(tokenizer))
        result["by_vocab"][label] = {}
        for name in names:
            pairs = make_pairs(PROFILES[name], n_pairs, words, seed=cfg.seed)
            sides = {s: [] for s in SIDES}
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                for r in range(sizes["rounds"]):
                    for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                        run = run_side(side, plan, model_path, pairs, tokenizer, Path(tmp), sizes, memory=r == 0)
                        sides[side].append(run)
                        print(f"bench: profiles vocab {label} {name} round {r + 1} {side}: {run['pairs_per_s']:.2f} pairs/s, "
                              f"padding {run['padding_fraction']:.1%}, load {' '.join(run['loadavg'])}", flush=True)
            lengths = length_summary(draw_lengths(PROFILES[name], n_pairs, cfg.seed))
            result["by_vocab"][label][name] = {**summarize(sides), "lengths": lengths, "sides": sides}
            (root / "profiles.partial.json").write_text(json.dumps(result, indent=1, default=float))
    headline = result["by_vocab"][str(sizes["vocabs"][0] or len(tokenizer))]
    result["profiles"] = {name: {k: v for k, v in figures.items() if k not in ("sides", "lengths", "of_medians")}
                          for name, figures in headline.items()}
    (root / "profiles.json").write_text(json.dumps(result, indent=1, default=float))  # the raw figures, kept
    return result


TARGETS = {"vs_trl_default": ">= 2.0", "vs_trl_tuned": ">= 1.4 tldr, >= 1.2 others", "ref_pass_speedup": ">= 1.3 tldr",
           "peak_memory_ratio": "<= 1.0"}


def profile_rows(result: dict) -> list[str]:
    """The table's lines for the profiles part (launch/bench_runs.py format_rows)."""
    s = result["sizes"]
    layouts = sorted({r["layout"] for p in result["by_vocab"].values() for f in p.values() for r in f["sides"]["project"]})
    lines = ["", f"Length profiles (max_length {MAX_LENGTH}, {s['batch']} pairs a step, {s['rounds']} alternating round(s), "
             f"dpo.batching={result['batching']} -> {', '.join(layouts)}): pairs/s per side (medians); ratios are the "
             "project's (medians of per-round ratios)",
             f"  {'vocab':>6} {'profile':<14} {'prompt/resp':>11} {'trl_default':>11} {'trl_tuned':>9} {'project':>8} "
             f"{'vs_default':>10} {'vs_tuned':>8} {'ref_pass':>8} {'padding':>8} {'memory':>7}"]
    for vocab, by_profile in result["by_vocab"].items():
        for name, f in by_profile.items():
            rate = {side: median_of(runs, "pairs_per_s") for side, runs in f["sides"].items()}
            lines.append(f"  {vocab:>6} {name:<14} {f['lengths']['prompt_median']:5.0f}/{f['lengths']['response_median']:<5.0f} "
                         f"{rate['trl_default']:11.3f} {rate['trl_tuned']:9.3f} {rate['project']:8.3f} "
                         f"{f['vs_trl_default']:10.2f} {f['vs_trl_tuned']:8.2f} {fmt(f['ref_pass_speedup']):>8} "
                         f"{f['padding_fraction']:8.1%} {fmt(f['peak_memory_ratio']):>7}")
    lines.append("  targets: " + "; ".join(f"{k} {v}" for k, v in TARGETS.items()))
    return lines


def fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"
