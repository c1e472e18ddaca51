"""The launch-time memory check: on GPUs, a config the memory plan says cannot fit the device (or, with CPU
offload, the node's host memory) stops before any model is loaded, with one line naming the overrides that fit
(`plan.check=false` skips it). On a machine without a GPU it does nothing: the plan is about GPU memory.
memory_gate takes the device's memory as a number, so the refusal is tested without a GPU."""

from __future__ import annotations

import os

import torch
from omegaconf import DictConfig

from train.core.errors import ConfigError
from train.core.memory import host_memory_gb
from train.core.ranks import world_size
from train.memory.architecture import from_model_config
from train.memory.candidates import candidates, eval_memory, evaluate, recommend, setting_from_config
from train.memory.estimate import GIB


def check_memory_plan(cfg: DictConfig) -> None:
    if not cfg.plan.check or not torch.cuda.is_available():
        return
    gpus_per_node = int(os.environ.get("LOCAL_WORLD_SIZE") or 1)
    nodes = max(1, world_size() // gpus_per_node)
    memory_gb = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GIB
    memory_gate(cfg, gpus_per_node, nodes, memory_gb, host_memory_gb())


def memory_gate(cfg: DictConfig, gpus_per_node: int, nodes: int, memory_gb: float,
                host_gb: float | None = None) -> None:
    """Raises the one-line ConfigError when training or evaluation cannot fit `memory_gb` per GPU (or the offloaded
    states `host_gb` of host RAM per node); returns when both fit."""
    problem = memory_problem(cfg, gpus_per_node, nodes, memory_gb, host_gb) or eval_problem(cfg, memory_gb)
    if problem:
        raise ConfigError(problem)


def eval_problem(cfg: DictConfig, memory_gb: float) -> str | None:
    """None when evaluation fits one GPU (or is off); else the one line to stop with, before hours of training."""
    planned = eval_memory(cfg, memory_gb)
    if planned is None or planned["fits"]:
        return None
    return (f"evaluation after DPO holds one whole model per GPU: {planned['per_gpu_gb']:.1f} GB with "
            f"eval.batch_size={cfg.eval.batch_size}, {memory_gb:.1f} GB here: lower eval.batch_size, or set "
            f"eval.enabled=false and run stage=eval on larger GPUs (plan.check=false starts anyway)")


def memory_problem(cfg: DictConfig, gpus_per_node: int, nodes: int, memory_gb: float,
                   host_gb: float | None = None) -> str | None:
    """None when the plan says the config fits; else the one line to stop with."""
    arch = from_model_config(cfg.model)
    given = setting_from_config(cfg, arch, gpus_per_node, nodes)
    host_capacity = None if host_gb is None else int(host_gb * GIB)
    planned = evaluate(arch, given, given, int(memory_gb * GIB), [], cfg.dpo.args, host_capacity)
    if planned.fits:
        return None
    best = recommend(candidates(arch, given, memory_gb, [], cfg.dpo.args, host_gb))
    need = f"the memory plan: {planned.why_not}"
    advice = f"add {' '.join(best.overrides)}" if best else "nothing fits: more GPUs, a shorter dpo.args.max_length or a smaller model"
    return f"{need} ({nodes} node(s) x {gpus_per_node} GPU(s)): {advice} (python -m train.plan shows the parts; plan.check=false starts anyway)"
