"""The configurations around a given one, and the fastest that fits: what `python -m train.plan` recommends.

Candidates vary the DeepSpeed option (none, zero1, zero2, zero3, zero3_offload), the reference placement
(precomputed, model, lora), gradient checkpointing, and the micro-batch (halved down to 1, gradient
accumulation raised to keep the global batch). For each of the first three, the largest micro-batch that fits.

"Fastest" is a rough cost order, a product of step-time factors, not a measurement of your cluster:
  - gradient checkpointing     x1.33: one more forward of the three passes' worth a step costs
                               (measured here 1.23-1.46x per DPO step on CPU, docs/throughput.md);
  - dpo.reference=model        x1.33: a reference forward every step (measured here 1.26-1.34x vs precomputed);
  - zero1 / zero2              x1.0 / x1.05: the same communication volume as DDP (ZeRO paper, sec. 7);
  - zero3                      x1.15: 1.5x the communication volume of DDP (ZeRO paper, sec. 7.2.2);
  - zero3_offload              x2.0: the optimizer step on the CPU and parameters over PCIe;
  - each halving of micro-batch x1.1: smaller matmuls, more steps.
LoRA trains adapters, not the model: it is recommended only when no full fine-tuning fits.
A candidate fits when its per-GPU total is within the GPU's memory and, for zero3_offload, the offloaded states
(estimate.host_bytes_per_node) are within each node's host memory.
"""

from __future__ import annotations

import dataclasses
import itertools

from omegaconf import DictConfig

from train.config.choices import Reference, ZeroOption
from train.memory.architecture import Architecture, from_model_config
from train.memory.estimate import (GIB, ZERO_OPTIONS, ZERO_STAGE, Breakdown, Setting, eval_bytes,
                                      host_bytes_per_node, plan)

REFERENCES = (Reference.precomputed, Reference.model, Reference.lora)  # in the plan's order
ZERO_COST = {"none": 1.0, "zero1": 1.0, "zero2": 1.05, "zero3": 1.15, "zero3_offload": 2.0}
CHECKPOINTING_COST, REFERENCE_FORWARD_COST, HALVING_COST = 1.33, 1.33, 1.1
# TRL's DPOConfig defaults, for keys a config leaves out of dpo.args.
TRL_DEFAULTS = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "max_length": 1024,
                "gradient_checkpointing": True}
WEIGHT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}
# Module name -> (in, out) features of one decoder layer's projection, for LoRA's r x (in + out) per target.
LORA_SHAPES = {
    "q_proj": lambda a: (a.hidden_size, a.num_attention_heads * a.head_dim),
    "k_proj": lambda a: (a.hidden_size, a.num_key_value_heads * a.head_dim),
    "v_proj": lambda a: (a.hidden_size, a.num_key_value_heads * a.head_dim),
    "o_proj": lambda a: (a.num_attention_heads * a.head_dim, a.hidden_size),
    "gate_proj": lambda a: (a.hidden_size, a.intermediate_size),
    "up_proj": lambda a: (a.hidden_size, a.intermediate_size),
    "down_proj": lambda a: (a.intermediate_size, a.hidden_size),
}


@dataclasses.dataclass(frozen=True)
class Candidate:
    setting: Setting
    memory: Breakdown
    fits: bool
    cost: float
    overrides: list[str]
    host: int = 0  # bytes of host RAM per node the offloaded states need (zero3_offload only)
    why_not: str = ""  # why it does not fit ("" when it fits)

    def as_json(self) -> dict:
        return {"overrides": self.overrides, "fits": self.fits, "per_gpu_gb": self.memory.gb(),
                "host_gb_per_node": round(self.host / GIB, 2), "why_not": self.why_not}


def zero_option(deepspeed: DictConfig) -> str:
    zero = (deepspeed.config or {}).get("zero_optimization", {}) if deepspeed.stage else {}
    offloaded = any((zero.get(k) or {}).get("device") == "cpu" for k in ("offload_optimizer", "offload_param"))
    return ZeroOption.zero3_offload if deepspeed.stage == 3 and offloaded else ZERO_OPTIONS[deepspeed.stage]


def lora_parameters(arch: Architecture, r: int, targets: list[str]) -> int:
    return arch.num_hidden_layers * sum(r * sum(LORA_SHAPES[t](arch)) for t in targets if t in LORA_SHAPES)


def setting_from_config(cfg: DictConfig, arch: Architecture, gpus_per_node: int, nodes: int) -> Setting:
    args = {**TRL_DEFAULTS, **{k: v for k, v in cfg.dpo.args.items() if k in TRL_DEFAULTS}}
    return Setting(zero=zero_option(cfg.deepspeed), reference=cfg.dpo.reference,
                   gradient_checkpointing=bool(args["gradient_checkpointing"]),
                   micro_batch=int(args["per_device_train_batch_size"]),
                   grad_accum=int(args["gradient_accumulation_steps"]), max_length=int(args["max_length"]),
                   gpus_per_node=gpus_per_node, nodes=nodes, weight_bytes=WEIGHT_BYTES.get(cfg.model.dtype, 2),
                   lora_params=lora_parameters(arch, cfg.dpo.lora.r, list(cfg.dpo.lora.target_modules)))


def cost(s: Setting, given: Setting) -> float:
    halvings = (given.micro_batch // s.micro_batch).bit_length() - 1
    return round(ZERO_COST[s.zero] * (CHECKPOINTING_COST if s.gradient_checkpointing else 1.0)
                 * (REFERENCE_FORWARD_COST if s.reference == Reference.model else 1.0) * HALVING_COST ** halvings, 3)


def overrides(s: Setting, given: Setting, user_overrides: list[str], dpo_args: DictConfig) -> list[str]:
    """The user's overrides with the candidate's changes on top, ready to paste after `python -m train`."""
    changes = {}
    if s.zero != given.zero:
        changes["deepspeed"] = s.zero
    if s.reference != given.reference:
        changes["dpo.reference"] = s.reference
    for key, value, was in (("gradient_checkpointing", s.gradient_checkpointing, given.gradient_checkpointing),
                            ("per_device_train_batch_size", s.micro_batch, given.micro_batch),
                            ("gradient_accumulation_steps", s.grad_accum, given.grad_accum)):
        if value != was:
            changes[f"{'' if key in dpo_args else '+'}dpo.args.{key}"] = str(value).lower()
    changed = {k.lstrip("+") for k in changes}
    kept = [o for o in user_overrides if o.split("=", 1)[0].lstrip("+~") not in changed]
    return kept + [f"{k}={v}" for k, v in changes.items()]


def evaluate(arch: Architecture, s: Setting, given: Setting, capacity: int, user: list[str], args,
             host_capacity: int | None = None) -> Candidate:
    """One setting against `capacity` bytes per GPU and `host_capacity` bytes of host RAM per node (None: not
    checked)."""
    memory, host = plan(arch, s), host_bytes_per_node(arch, s)
    why = []
    if memory.total > capacity:
        why.append(f"needs {memory.total / GIB:.1f} GB per GPU, the GPU has {capacity / GIB:.1f} GB")
    if host_capacity is not None and host > host_capacity:
        why.append(f"CPU offload needs {host / GIB:.1f} GB of host RAM per node for the offloaded params and optimizer "
                   f"states, the host has {host_capacity / GIB:.1f} GB (host_memory_gb=)")
    return Candidate(s, memory, not why, cost(s, given), overrides(s, given, user, args), host, "; ".join(why))


def candidates(arch: Architecture, given: Setting, gpu_memory_gb: float, user_overrides: list[str],
               dpo_args: DictConfig, host_memory_gb: float | None = None) -> list[Candidate]:
    """For each DeepSpeed option x reference x checkpointing: the largest micro-batch (a halving of the given one
    that keeps the global batch) that fits, else the given micro-batch (not fitting)."""
    capacity = int(gpu_memory_gb * GIB)
    host_capacity = None if host_memory_gb is None else int(host_memory_gb * GIB)
    micro_batches = [m for m in (given.micro_batch >> i for i in range(given.micro_batch.bit_length()))
                     if (given.micro_batch * given.grad_accum) % m == 0]
    out = []
    for zero, reference, checkpointing in itertools.product(ZERO_OPTIONS, REFERENCES, (False, True)):
        tried = [evaluate(arch, dataclasses.replace(given, zero=zero, reference=reference, micro_batch=m,
                                                    gradient_checkpointing=checkpointing,
                                                    grad_accum=given.micro_batch * given.grad_accum // m),
                          given, capacity, user_overrides, dpo_args, host_capacity) for m in micro_batches]
        out.append(next((c for c in tried if c.fits), tried[0]))
    return out


def recommend(found: list[Candidate]) -> Candidate | None:
    """The cheapest candidate that fits; LoRA only when no full fine-tuning fits; ties go to less sharding."""
    fitting = [c for c in found if c.fits]
    full = [c for c in fitting if c.setting.reference != Reference.lora]
    pool = full or fitting
    if not pool:
        return None
    return min(pool, key=lambda c: (c.cost, ZERO_STAGE[c.setting.zero], c.memory.total))


def lora_note(found: list[Candidate], best: Candidate | None) -> str | None:
    """Why the recommendation is (or is not) LoRA, when a LoRA candidate fits: the ranking puts full fine-tuning
    first whenever any fits, so a LoRA row with less memory or a lower cost can sit above or below it in the table."""
    lora = [c for c in found if c.fits and c.setting.reference == Reference.lora]
    if best is None or not lora:
        return None
    if best.setting.reference == Reference.lora:
        return ("LoRA recommended: no full fine-tuning fits; LoRA trains adapters on a frozen base, a different "
                "result from full fine-tuning")
    smallest, cheapest = min(lora, key=lambda c: c.memory.total), min(lora, key=lambda c: c.cost)
    better = []
    if smallest.memory.total < best.memory.total:
        better.append(f"less memory ({smallest.memory.total / GIB:.1f} GB per GPU vs {best.memory.total / GIB:.1f})")
    if cheapest.cost < best.cost:
        better.append(f"a lower cost ({cheapest.cost:.2f} vs {best.cost:.2f})")
    if not better:
        return None
    return (f"not LoRA: dpo.reference=lora fits with {' and '.join(better)} but trains only adapters (a different "
            "result); recommended full fine-tuning since it fits")


def eval_memory(cfg: DictConfig, memory_gb: float) -> dict | None:
    """Evaluation's bytes per GPU against `memory_gb` ({"per_gpu_gb", "fits"}); None when evaluation is off."""
    if not cfg.eval.enabled:
        return None
    arch = from_model_config(cfg.model)
    tokens = int(cfg.dpo.args.get("max_length", TRL_DEFAULTS["max_length"])) + int(cfg.eval.max_new_tokens)
    needed = eval_bytes(arch, WEIGHT_BYTES.get(cfg.model.dtype, 2), int(cfg.eval.batch_size), tokens,
                        int(cfg.eval.max_new_tokens))
    return {"per_gpu_gb": round(needed / GIB, 2), "fits": needed <= memory_gb * GIB}
