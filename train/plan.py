"""Will it fit? Per-GPU memory of a DPO config on a cluster, and the fastest configuration that fits.

    python -m train.plan model=llama3_8b recipe=real_model gpus_per_node=8 nodes=1 gpu_memory_gb=80
    make plan ARGS="model=llama3_8b recipe=real_model" GPUS_PER_NODE=8 NODES=1 GPU_MEMORY_GB=80

Takes the same overrides as `python -m train` (gpus_per_node, nodes, gpu_memory_gb and host_memory_gb are this
tool's own; host_memory_gb, the RAM of each node, defaults to this machine's) and reads the model's architecture
numbers only (model.arch, or a local config.json): no weights, no GPU. Prints a table (the given config first,
then each DeepSpeed option x reference x checkpointing at the largest micro-batch that fits; host: the host RAM per
node that CPU offload needs), the recommendation with its overrides and the command that launches it on
nodes x gpus_per_node processes, why a fitting LoRA row is not the recommendation, the offload rows the host cannot
hold, and one JSON object as the last line: {"given", "recommended", "candidates", "eval", "launch",
"host_memory_gb"}, each candidate with overrides, fits, per_gpu_gb, host_gb_per_node and why_not. GB here are GiB
(2**30 bytes), as DeepSpeed's estimators print them. The figures are train/memory/estimate.py's.
"""

from __future__ import annotations

import json
import sys

from train.config.compose import compose
from train.console.libraries import quiet_libraries
from train.core.cli import fail
from train.core.errors import ConfigError
from train.core.memory import host_memory_gb
from train.memory.architecture import from_model_config
from train.memory.candidates import candidates, eval_memory, evaluate, recommend, setting_from_config
from train.memory.report import HEADER, launch_command, recommendation_lines, row

OWN_KEYS = {"gpus_per_node": int, "nodes": int, "gpu_memory_gb": float, "host_memory_gb": float}
DEFAULTS = {"gpus_per_node": 1, "nodes": 1, "gpu_memory_gb": 80.0, "host_memory_gb": None}  # host: this machine's


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
    host_gb, host_source = own["host_memory_gb"], "host_memory_gb="
    if host_gb is None:
        host_gb, host_source = host_memory_gb(), "this machine's /proc/meminfo; give host_memory_gb= for the training nodes"
    host_capacity = None if host_gb is None else int(host_gb * 2**30)
    capacity = int(own["gpu_memory_gb"] * 2**30)
    given = evaluate(arch, given_setting, given_setting, capacity, overrides, cfg.dpo.args, host_capacity)
    found = candidates(arch, given_setting, own["gpu_memory_gb"], overrides, cfg.dpo.args, host_gb)
    best = recommend(found)
    print(f"plan: {cfg.model.name_or_path} ({arch.num_parameters / 1e9:.2f}B), {own['nodes']} node(s) x "
          f"{own['gpus_per_node']} GPU(s) x {own['gpu_memory_gb']:g} GB, max_length {given_setting.max_length}, "
          f"global batch {given_setting.micro_batch * given_setting.grad_accum * given_setting.gpus} pairs")
    print(f"host memory: {'unknown (give host_memory_gb=)' if host_gb is None else f'{host_gb:.1f} GB per node'} "
          f"({host_source}): the limit for CPU offload's params and optimizer states (column host, GB per node)")
    print(HEADER)
    print(row("given", given))
    for c in sorted(found, key=lambda c: (not c.fits, c.cost, c.memory.total)):
        print(row("*" if c is best else "", c))
    print("\n".join(recommendation_lines(found, best, own["gpus_per_node"], own["nodes"], host_capacity)))
    launch = None if best is None else launch_command(best.overrides, own["gpus_per_node"], own["nodes"])
    evaluation = eval_memory(cfg, own["gpu_memory_gb"])
    if evaluation is not None:
        verdict = "fits" if evaluation["fits"] else (
            f"does NOT fit in {own['gpu_memory_gb']:g} GB: lower eval.batch_size, or eval.enabled=false and stage=eval "
            "on larger GPUs")
        print(f"evaluation: {evaluation['per_gpu_gb']:.1f} GB per GPU (one whole model at a time, generate()'s cache "
              f"for eval.batch_size={cfg.eval.batch_size}): {verdict}")
    print(json.dumps({"given": given.as_json(), "recommended": best.as_json() if best else None,
                      "candidates": [c.as_json() for c in found], "eval": evaluation, "launch": launch,
                      "host_memory_gb": None if host_gb is None else round(host_gb, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
