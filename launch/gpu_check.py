"""GPU check: the benchmark's DPO step on one GPU in bf16, with a ~0.5B Llama built from a config.

    python launch/gpu_check.py                  # ~0.5B model, 25 timed steps after 5 warm-up steps
    python launch/gpu_check.py --batch 128      # pairs per step (default 64)
    python launch/gpu_check.py --smoke          # the same code on this CPU with the tiny model, fp32 (wiring check)
    python launch/gpu_check.py --layouts padded # one dpo.batching layout (default: padded, prefix_shared, packed)
    python launch/gpu_check.py --attn flash_attention_2  # packed as varlen flash attention (needs flash-attn)

Reports tokens/s, pairs/s and MFU against the GPU's dense bf16 peak (train/trainer/throughput.py's table: H100 SXM
and H200 989 TFLOP/s, A100 312, ...; a bf16 matmul measured on the spot for a GPU not in the table).
Same code path as `make bench`: the project's DPO trainer and defaults (train/trainer/builders.py), the
synthetic preference data, the FLOP count of train/models/flops.py. No download: weights are random
(throughput does not depend on them), built on the CPU and saved once under outputs/gpu_check/. Takes under
five minutes on an H100.
Without a GPU it says so and exits 0.
Each DPO micro-batch layout (dpo.batching) is measured in turn on the same model and data. MFU counts
the FLOPs of the padded layout's useful tokens (the prompt twice per pair), so a layout that does less work for
the same pairs shows as a higher MFU: the ratio between layouts is their speedup.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script (`python launch/gpu_check.py`): `launch` and `train` from this checkout

from launch.bench_setup import compose, data_overrides, step_figures, timing_args  # noqa: E402
from train.data import load_preference_data  # noqa: E402
from train.models.loading import count_parameters_from_config, ensure_base_model, load_tokenizer  # noqa: E402
from train.trainer import layouts  # noqa: E402
from train.trainer.builders import build_dpo_trainer, reference_forward  # noqa: E402
from train.trainer.throughput import ThroughputCallback, peak_flops, peak_memory_mb  # noqa: E402
from train.config.choices import Batching

# Qwen2.5-0.5B's widths (896 wide, MLP 4864, 14 heads of 64) with 32 layers and the tiny tokenizer's small
# vocabulary: ~0.52B parameters, nearly all in the decoder layers.
MODEL_05B = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 32, "num_attention_heads": 14,
             "max_position_embeddings": 512}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    parser.add_argument("--batch", type=int, default=64, help="pairs per step")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu_check")
    parser.add_argument("--smoke", action="store_true", help="run the same path on the CPU with the tiny model")
    parser.add_argument("--layouts", default="padded,prefix_shared,packed", help="dpo.batching layouts to measure")
    parser.add_argument("--attn", default="sdpa", help="model.attn_implementation (sdpa, eager, flash_attention_2)")
    opts = parser.parse_args(argv)
    if opts.smoke:
        opts.steps, opts.warmup, opts.batch = 2, 1, 8
    elif not torch.cuda.is_available():
        print("gpu_check: no GPU on this machine (torch.cuda.is_available() is False); nothing to measure.", flush=True)
        return 0

    results = []
    for layout in opts.layouts.split(","):
        reason = None if layout == Batching.padded else layouts.unsupported_reason(layout, "llama", opts.attn)
        if reason:
            print(f"gpu_check: skipping {layout}: {reason}", flush=True)
        else:
            results.append(measure(opts, layout))
    print(json.dumps(results[0] if len(results) == 1 else {"layouts": results}), flush=True)
    return 0


def measure(opts, layout: str) -> dict:
    start = time.perf_counter()
    root = opts.out.resolve()
    pairs = opts.batch * (opts.steps + opts.warmup)
    model = [f"model.name_or_path={root / 'models' / 'tiny'}"] if opts.smoke else [
        *[f"model.tiny.{k}={v}" for k, v in MODEL_05B.items()], f"model.name_or_path={root / 'models' / 'llama-05b'}",
        "model.dtype=bfloat16", "+dpo.args.bf16=true"]
    plan = compose([*model, *data_overrides(pairs, 64), f"output_root={root}", "sft.enabled=false",
                    f"dpo.batching={layout}", f"model.attn_implementation={opts.attn}"])
    cfg = plan.config
    model_path = ensure_base_model(cfg.model)
    tokenizer = load_tokenizer(cfg.model, model_path, cfg.data.conversational)
    data = load_preference_data(cfg, tokenizer)
    built_s = time.perf_counter() - start
    device = torch.device("cpu") if opts.smoke else torch.device("cuda", torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # each layout's own peak
    trainer = build_dpo_trainer(plan, model_path, data, tokenizer, root / "dpo",
                                extra=timing_args(opts.batch, opts.steps + opts.warmup))
    callback = ThroughputCallback.attach(trainer, "dpo", reference_forward=reference_forward(cfg.dpo))
    trainer.train()
    steps = callback.steps[opts.warmup:]
    peak = peak_flops(device, torch.float32 if opts.smoke else torch.bfloat16)
    figures = step_figures(steps, peak)
    result = {
        "gpu": "cpu (smoke)" if opts.smoke else torch.cuda.get_device_name(device),
        "layout": trainer.batch_layout,
        "parameters": count_parameters_from_config(model_path, False),
        "batch_pairs": opts.batch,
        "steps_timed": len(steps),
        "tokens_per_s": figures["tokens_per_s"],
        "pairs_per_s": figures["pairs_per_s"],
        "step_s_median": figures["step_s"],
        "mfu": figures["mfu"],
        "peak_flops": peak,
        "dtype": "float32" if opts.smoke else "bfloat16",
        "peak_memory_gb": peak_memory_mb(device) / 1024,
        "reference": cfg.dpo.reference,
        "setup_s": round(built_s, 1),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    print(f"gpu_check: {result['gpu']}, {result['parameters'] / 1e9:.2f}B parameters, layout {result['layout']}, "
          f"batch {opts.batch} pairs: {result['tokens_per_s']:.0f} tokens/s, {result['pairs_per_s']:.1f} pairs/s, "
          f"MFU {result['mfu']:.3f} of {peak / 1e12:.2f} TFLOP/s, peak memory {result['peak_memory_gb']:.1f} GiB, "
          f"{result['wall_s']:.0f} s in all", flush=True)
    del trainer
    return result


if __name__ == "__main__":
    sys.exit(main())
