"""What the benchmark (launch/bench.py, bench_steps.py, bench_runs.py) and the GPU check (launch/gpu_check.py)
share: the sizes, the Hydra overrides of the benchmark model and data, composing and checking the config as
`python -m train` does, loading the inputs once, and timing a trainer's steps."""

from __future__ import annotations

import gc
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from train.config.compose import compose as compose_config
from train.console.progress import ConsoleLogCallback
from train.data import load_preference_data
from train.models.loading import ensure_base_model, load_tokenizer
from train.pipeline.checks import check_config
from train.trainer.start_plan import StartPlan
from train.trainer.throughput import ThroughputCallback, measure_matmul_peak

REPO = Path(__file__).resolve().parent.parent

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
         "rss_steps": 2, "rss_batch": 8, "import_runs": 1}


def model_overrides(sizes: dict, root: Path) -> list[str]:
    """Hydra overrides for the benchmark model: the tiny spec widened to ~20M (or ~155M), built once under `root`."""
    if sizes["model"] is None:
        return [f"model.name_or_path={root / 'models' / 'tiny'}"]
    spec = [f"model.tiny.{k}={v}" for k, v in sizes["model"].items()]
    return [*spec, f"model.name_or_path={root / 'models' / sizes['model_dir']}"]


def data_overrides(pairs: int, rows: int) -> list[str]:
    return ["debug=fast", f"data.synthetic.num_pairs={pairs}", f"data.synthetic.num_sft={rows}",
            "eval.enabled=false", "wandb.enabled=false"]


def compose(overrides: list[str]) -> StartPlan:
    """What `python -m train <overrides>` runs with, after the same start-up checks: the typed config (`.config`)
    and the checked trainer settings the builders take."""
    return check_config(compose_config(overrides))


def load_inputs(sizes: dict, root: Path, extra: list[str] = ()):
    """The start plan (typed config and trainer settings), the benchmark model (built once) and its tokenizer, and
    the preference data."""
    plan = compose([*model_overrides(sizes, root), *data_overrides(sizes["pairs"], sizes["sft_rows"]),
                   f"output_root={root}", "sft.enabled=false", *extra])
    cfg = plan.config
    model_path = ensure_base_model(cfg.model)
    tokenizer = load_tokenizer(cfg.model, model_path, cfg.data.conversational)
    return plan, model_path, tokenizer, load_preference_data(cfg, tokenizer)


def timing_args(batch: int, steps: int) -> dict[str, Any]:
    """TrainingArguments the benchmark fixes on top of a stage's own (the builders' `extra`): the batch and
    the number of steps, and no saving, reporting or progress bar."""
    return {"per_device_train_batch_size": batch, "max_steps": steps, "save_strategy": "no", "report_to": [],
            "disable_tqdm": True}


def step_figures(steps: list[dict], peak: float) -> dict[str, float]:
    """Rates over the timed steps of a ThroughputCallback (`sequences` are pairs for DPO, rows for SFT)."""
    seconds = sum(s["seconds"] for s in steps)
    return {
        "pairs_per_s": sum(s["sequences"] for s in steps) / seconds,
        "tokens_per_s": sum(s["tokens"] for s in steps) / seconds,
        "step_s": statistics.median(s["seconds"] for s in steps),
        "mfu": sum(s["flops"] for s in steps) / seconds / peak,
    }


def measure_steps(build: Callable, reference_forward: bool, batch: int, warmup: int, peak: float,
                  kind: str = "dpo") -> dict:
    """Train with the throughput callback; figures over the steps after `warmup`."""
    start = time.perf_counter()
    trainer = build()
    construct_s = time.perf_counter() - start
    callback = ThroughputCallback.attach(trainer, kind, reference_forward=reference_forward)
    ConsoleLogCallback.attach(trainer, kind)  # TRL's sides too: a line per step, as the project's prints
    trainer.train()
    steps = callback.steps[warmup:]
    figures = {
        **step_figures(steps, peak),
        "padding_fraction": 1 - sum(s["tokens"] for s in steps) / sum(s["padded_tokens"] for s in steps),
        "construct_s": construct_s,
        "steps_timed": len(steps),
        "pairs_per_step": batch,
    }
    del trainer, callback
    gc.collect()
    return figures


def alternate(builders: dict, sizes: dict, peaks: list[float]) -> dict[str, list[dict]]:
    """Each side once per round; the order reverses every round, so no side always runs on a warmer or
    cooler machine. The matmul peak is re-measured before every side."""
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
