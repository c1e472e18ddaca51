"""The host-memory check for ZeRO-3 CPU offload: the parameters' fp32 states must fit in each machine's RAM."""

from __future__ import annotations

import psutil

from train.core.errors import ConfigError
from train.models.loading import count_parameters_from_config


# Host bytes per parameter with ZeRO-3 offload: fp32 weights (4) + fp32 gradients (4) + Adam's two
# moments (8). A lower bound: pinned buffers and activations come on top.
OFFLOAD_BYTES_PER_PARAM = 16


def check_offload_memory(ds_config: dict | None, model_path: str, trust_remote_code: bool, num_machines: int) -> None:
    """Refuse CPU offload that cannot fit in this machine's memory, before any process trains."""
    zero = (ds_config or {}).get("zero_optimization", {})
    offloaded = any((zero.get(k) or {}).get("device") == "cpu" for k in ("offload_optimizer", "offload_param"))
    if not offloaded:
        return
    params = count_parameters_from_config(model_path, trust_remote_code)
    needed = params * OFFLOAD_BYTES_PER_PARAM / max(num_machines, 1)
    available = psutil.virtual_memory().available
    if needed > available:
        raise ConfigError(
            f"deepspeed=zero3_offload needs ~{needed / 2**30:.1f} GiB of host memory per machine for {params / 1e9:.2f}B "
            f"parameters but {available / 2**30:.1f} GiB is available: use deepspeed=zero3, more nodes, or a smaller model"
        )
