"""Throughput during every run: tokens/s, pairs/s (DPO) or rows/s (SFT), MFU and peak memory.

`ThroughputCallback.attach(trainer, ...)` counts what the policy really processes: a forward pre-hook on
the model reads each training forward's attention mask (unpadded lengths), so the FLOP count
(train/models/flops.py) follows the actual batches, whatever the sampler, collator or ZeRO stage. At each
logging step it adds, to the same record W&B receives:

    throughput/tokens_per_s      unpadded tokens (chosen + rejected for DPO) per second, all ranks
    throughput/pairs_per_s       DPO pairs per second (rows_per_s for SFT)
    throughput/mfu               model FLOP/s / peak FLOP/s of the ranks' devices
    throughput/peak_memory_mb    the largest rank's peak: CUDA allocated, or process RSS on CPU

Rates are over the wall time since the previous logging step (data loading and the optimizer
included). The peak is a dense matmul measured on each rank at the start of training (a table of
vendor figures for known GPUs in bf16/fp16), so MFU compares the run with what the same machine
does, in the same run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from train.core.memory import peak_rss_mb
from train.models.flops import ModelSpec, dpo_step_flops, training_flops
from train.runtime.distributed import is_distributed

# Dense (no sparsity) peak FLOP/s from vendor data sheets, matched on torch.cuda.get_device_name().
# Checked in order: the first key found in the device name wins (H100 PCIe before plain H100).
GPU_PEAK_FLOPS = {
    "bf16": [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
             ("A10G", 125e12), ("L4", 121e12), ("V100", 125e12)],
    "fp32": [("H200", 67e12), ("H100 PCIe", 51e12), ("H100", 67e12), ("A100", 19.5e12), ("L40S", 91.6e12),
             ("A10G", 31.2e12), ("L4", 30.3e12), ("V100", 15.7e12)],
}


def known_gpu_peak(device_name: str, dtype: torch.dtype) -> float | None:
    table = GPU_PEAK_FLOPS["fp32" if dtype == torch.float32 else "bf16"]
    return next((flops for key, flops in table if key in device_name), None)


def measure_matmul_peak(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                        size: int | None = None, repeats: int = 5) -> float:
    """Best FLOP/s of a square matmul on `device`, over `repeats` timed batches (after a warm-up)."""
    device = torch.device(device)
    size = size or (1024 if device.type == "cpu" else 4096)  # 4096: 128 MB on a GPU that may be nearly full
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    per_batch = 4 if device.type == "cpu" else 50
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(per_batch):
            a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * per_batch / best


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """The peak the MFU is measured against: the vendor figure for a known GPU in 16-bit, else measured."""
    if device.type == "cuda" and dtype != torch.float32:
        known = known_gpu_peak(torch.cuda.get_device_name(device), dtype)
        if known:
            return known
    return measure_matmul_peak(device, dtype)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def sequence_lengths(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                     position_ids: torch.Tensor | None = None) -> list[int]:
    """Unpadded lengths of a batch: from the attention mask, or from position_ids restarting at 0 when
    sequences are packed padding-free into one row."""
    if attention_mask is not None and attention_mask.dim() == 2:
        return attention_mask.sum(dim=1).tolist()
    if position_ids is not None:
        starts = (position_ids.flatten() == 0).nonzero().flatten().tolist() + [position_ids.numel()]
        return [b - a for a, b in zip(starts, starts[1:]) if b > a]
    return [input_ids.shape[1]] * input_ids.shape[0]


@dataclass
class Counts:
    flops: float = 0.0
    tokens: float = 0.0
    sequences: float = 0.0
    padded_tokens: float = 0.0  # tokens including padding: what the matmuls really process


class ThroughputCallback(TrainerCallback):
    """See the module docstring. `kind` is "dpo" or "sft"; `reference_forward` says whether a DPO step
    also runs the reference model (reference=model or lora), which costs one more forward."""

    def __init__(self, kind: str, spec: ModelSpec, reference_forward: bool = False):
        self.kind, self.spec, self.reference_forward = kind, spec, reference_forward
        self.window = Counts()  # since the last logging step, this rank
        self.step = Counts()  # the current optimizer step, this rank
        # Per optimizer step: seconds since the previous step ended (data, logging, saving included) and
        # this rank's counts. The benchmark reads it.
        self.steps: list[dict] = []
        self.peak = 0.0  # summed over ranks
        self.device = torch.device("cpu")
        self._window_start = self._last_step_end = 0.0

    @classmethod
    def attach(cls, trainer, kind: str, reference_forward: bool = False) -> "ThroughputCallback":
        model = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
        callback = cls(kind, ModelSpec.from_config(model.config), reference_forward)
        # First in line, so the metrics it adds in on_log are in the record the W&B callback sends.
        trainer.callback_handler.callbacks.insert(0, callback)
        trainer.model.register_forward_pre_hook(callback._count_forward, with_kwargs=True)
        return callback

    def _count_forward(self, module, args, kwargs):
        # Training forwards only: evaluation and the reference's no-grad forwards (lora) are not policy steps.
        if not (module.training and torch.is_grad_enabled()):
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            return
        lens = sequence_lengths(input_ids, kwargs.get("attention_mask"), kwargs.get("position_ids"))
        if self.kind == "dpo":
            flops = dpo_step_flops(self.spec, lens, self.reference_forward)
        else:
            flops = training_flops(self.spec, lens)
        for counts in (self.window, self.step):
            counts.flops += flops
            counts.tokens += sum(lens)
            counts.padded_tokens += input_ids.numel()
            counts.sequences += len(lens) / (2 if self.kind == "dpo" else 1)  # a DPO batch is [chosen; rejected]

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.device = args.device
        dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
        self.peak = _sum_over_ranks([peak_flops(self.device, dtype)], self.device)[0]
        self._window_start = self._last_step_end = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.steps.append({"seconds": now - self._last_step_end, **vars(self.step)})
        self.step, self._last_step_end = Counts(), now

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:  # training logs only (not eval, not the end-of-run summary)
            return
        seconds = time.perf_counter() - self._window_start
        flops, tokens, sequences = _sum_over_ranks(
            [self.window.flops, self.window.tokens, self.window.sequences], self.device)
        (memory,) = _max_over_ranks([peak_memory_mb(self.device)], self.device)
        metrics = {
            "throughput/tokens_per_s": tokens / seconds,
            f"throughput/{'pairs' if self.kind == 'dpo' else 'rows'}_per_s": sequences / seconds,
            "throughput/mfu": flops / seconds / self.peak if self.peak else 0.0,
            "throughput/peak_memory_mb": memory,
        }
        logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)  # Trainer.log copied `logs` there before the callbacks ran
        self.window = Counts()
        self._window_start = time.perf_counter()


def _reduce(values: list[float], device: torch.device, op) -> list[float]:
    if not (is_distributed() and dist.get_world_size() > 1):
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op)
    return tensor.tolist()


def _sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    return _reduce(values, device, dist.ReduceOp.SUM)


def _max_over_ranks(values: list[float], device: torch.device) -> list[float]:
    return _reduce(values, device, dist.ReduceOp.MAX)
