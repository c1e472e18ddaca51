"""Will it fit? Per-GPU memory of a DPO config on a cluster, and the fastest configuration that fits.

    python -m train.plan model=llama3_8b recipe=real_model gpus_per_node=8 nodes=1 gpu_memory_gb=80
    make plan ARGS="model=llama3_8b recipe=real_model" GPUS_PER_NODE=8 NODES=1 GPU_MEMORY_GB=80

Takes the same overrides as `python -m train` (gpus_per_node, nodes and gpu_memory_gb are this tool's own)
and reads the model's architecture numbers only (model.arch, or a local config.json): no weights, no GPU.
Prints a table (the given config first, then each DeepSpeed option x reference x checkpointing at the
largest micro-batch that fits), the recommendation with its overrides, and one JSON object as the last line:
{"given", "recommended", "candidates"}, each with overrides, fits and per_gpu_gb. GB here are GiB (2**30 bytes),
as DeepSpeed's estimators print them. The figures are train/models/memory_plan.py's.
"""

from __future__ import annotations

import json
import sys

from train.config.compose import compose
from train.core.cli import fail
from train.core.errors import ConfigError
from train.models.architecture import from_model_config
from train.models.memory_candidates import Candidate, candidates, eval_memory, evaluate, recommend, setting_from_config
from train.runtime.console import quiet_libraries

OWN_KEYS = {"gpus_per_node": int, "nodes": int, "gpu_memory_gb": float}
DEFAULTS = {"gpus_per_node": 1, "nodes": 1, "gpu_memory_gb": 80.0}
COLUMNS = ("params", "grads", "optimizer", "reference", "activations", "logits", "buffers", "total")


def split_args(argv: list[str]) -> tuple[dict, list[str]]:
    own, overrides = dict(DEFAULTS), []
    for arg in argv:
        key, _, value = arg.lstrip("+").partition("=")
        if key not in OWN_KEYS:
            overrides.append(arg)
            continue
        try:
            own[key] = OWN_KEYS[key](value)
        except ValueError:
            raise ConfigError(f"{key}={value}: give a number") from None
        if own[key] <= 0:
            raise ConfigError(f"{key}={value}: must be > 0")
    return own, overrides


def row(label: str, c: Candidate) -> str:
    s, gb = c.setting, c.memory.gb()
    knobs = f"{s.zero:13} {s.reference:11} {'on' if s.gradient_checkpointing else 'off':4} {s.micro_batch:>3}x{s.grad_accum:<3}"
    return f"{label:5} {knobs} " + " ".join(f"{gb[k]:>7.1f}" for k in COLUMNS) + f"  {'yes' if c.fits else 'NO':4} {c.cost:5.2f}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    quiet_libraries()
    try:
        own, overrides = split_args(argv)
        cfg = compose(overrides)
        arch = from_model_config(cfg.model)
    except ConfigError as err:
        fail(str(err))
    given_setting = setting_from_config(cfg, arch, own["gpus_per_node"], own["nodes"])
    capacity = int(own["gpu_memory_gb"] * 2**30)
    given = evaluate(arch, given_setting, given_setting, capacity, overrides, cfg.dpo.args)
    found = candidates(arch, given_setting, own["gpu_memory_gb"], overrides, cfg.dpo.args)
    best = recommend(found)
    print(f"plan: {cfg.model.name_or_path} ({arch.num_parameters / 1e9:.2f}B), {own['nodes']} node(s) x "
          f"{own['gpus_per_node']} GPU(s) x {own['gpu_memory_gb']:g} GB, max_length {given_setting.max_length}, "
          f"global batch {given_setting.micro_batch * given_setting.grad_accum * given_setting.gpus} pairs")
    print(f"{'':5} {'deepspeed':13} {'reference':11} {'ckpt':4} {'mbxga':7} " + " ".join(f"{k[:7]:>7}" for k in COLUMNS)
          + "  fits cost")
    print(row("given", given))
    for c in sorted(found, key=lambda c: (not c.fits, c.cost, c.memory.total)):
        print(row("*" if c is best else "", c))
    if best is None:
        print("recommended: nothing fits; more GPUs, a shorter dpo.args.max_length or a smaller model")
    else:
        print(f"recommended: python -m train {' '.join(best.overrides)}")
    evaluation = eval_memory(cfg, own["gpu_memory_gb"])
    if evaluation is not None:
        verdict = "fits" if evaluation["fits"] else (
            f"does NOT fit in {own['gpu_memory_gb']:g} GB: lower eval.batch_size, or eval.enabled=false and stage=eval "
            "on larger GPUs")
        print(f"evaluation: {evaluation['per_gpu_gb']:.1f} GB per GPU (one whole model at a time, generate()'s cache "
              f"for eval.batch_size={cfg.eval.batch_size}): {verdict}")
    print(json.dumps({"given": given.as_json(), "recommended": best.as_json() if best else None,
                      "candidates": [c.as_json() for c in found], "eval": evaluation}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
