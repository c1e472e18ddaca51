"""The memory plan: architecture numbers, per-GPU bytes of a DPO step, candidates, the GPU gate, the offload check."""
