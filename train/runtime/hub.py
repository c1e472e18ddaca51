"""Pushing to the Hugging Face Hub: refused at start when it cannot work, instead of failing after training."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from huggingface_hub import get_token
from omegaconf import DictConfig

from train.core.errors import ConfigError

HUB_ENDPOINT = "https://huggingface.co"


def hub_reachable(timeout_s: float = 3.0) -> bool:
    url = urlparse(os.environ.get("HF_ENDPOINT", HUB_ENDPOINT))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def check_push_to_hub(cfg: DictConfig) -> None:
    """`<stage>.args.push_to_hub=true` needs a token and the hub; the trainers push at every save."""
    for stage in ("sft", "dpo"):
        if not cfg[stage].args.get("push_to_hub"):
            continue
        later = "train without it and upload the saved model later (`hf upload <repo> <run dir>/policy`)"
        if os.environ.get("HF_HUB_OFFLINE") == "1" or not get_token():
            raise ConfigError(f"{stage}.args.push_to_hub=true: no Hugging Face token (set HF_TOKEN) or HF_HUB_OFFLINE=1; {later}")
        if not hub_reachable():
            raise ConfigError(f"{stage}.args.push_to_hub=true: the hub ({os.environ.get('HF_ENDPOINT', HUB_ENDPOINT)}) is unreachable; {later}")
