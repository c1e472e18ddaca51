"""A model's architecture numbers, known without its weights: what the memory plan needs (model.arch in
conf/model/*.yaml), checked against the model's own config.json whenever that is on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from train.core.errors import ConfigError

# The numbers compared with config.json (its key names are ours too).
CHECKED_KEYS = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "tie_word_embeddings")


@dataclass(frozen=True)
class Architecture:
    model_type: str
    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    num_parameters: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def largest_layer_params(self) -> int:
        """DeepSpeed's `largest_layer_params` (zero/stage3.py model_to_params): the most parameters one module
        holds itself, here the embedding (or LM head) matrix or an MLP projection, whichever is larger."""
        return max(self.vocab_size * self.hidden_size, self.hidden_size * self.intermediate_size)


def transformers_config(numbers: dict) -> PretrainedConfig:
    """The transformers config these numbers describe (LlamaConfig, Qwen2Config, MistralConfig, ...)."""
    fields = {k: v for k, v in numbers.items() if k not in ("model_type", "num_parameters")}
    return AutoConfig.for_model(numbers["model_type"], **fields)


def count_parameters(config: PretrainedConfig) -> int:
    """Parameters of the model `config` builds, on the meta device (no memory, no weights); a tied LM head
    counts once, as DeepSpeed's model_to_params counts it."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def from_model_config(model: DictConfig) -> Architecture:
    """The architecture of `model` (a composed cfg.model): its arch block, else a local directory's config.json."""
    local = Path(str(model.name_or_path)) / "config.json"
    if model.arch is None:
        if not local.is_file():
            raise ConfigError(f"model {model.name_or_path} has no model.arch numbers and no config.json on disk: add "
                              "an arch: block to its conf/model/<name>.yaml (see conf/model/llama3_8b.yaml)")
        return from_config_json(local)
    numbers = {k: model.arch[k] for k in CHECKED_KEYS}
    if local.is_file():
        check_against_config_json(numbers, local, vocab_is_upper_bound=model.tiny is not None)
    counted = count_parameters(transformers_config(numbers))
    declared = model.arch.num_parameters
    if declared is not None and declared != counted:
        raise ConfigError(f"model.arch.num_parameters={declared} but the architecture numbers give {counted}: "
                          "fix the numbers in the model's conf/model/<name>.yaml")
    return Architecture(**numbers, num_parameters=counted)


def from_config_json(path: Path) -> Architecture:
    config = AutoConfig.from_pretrained(path.parent).get_text_config()
    return Architecture(**disk_numbers(config), num_parameters=count_parameters(config))


def disk_numbers(config: PretrainedConfig) -> dict:
    numbers = {k: getattr(config, k, None) for k in CHECKED_KEYS}
    numbers["num_key_value_heads"] = numbers["num_key_value_heads"] or numbers["num_attention_heads"]
    return numbers


def check_against_config_json(numbers: dict, path: Path, vocab_is_upper_bound: bool = False) -> None:
    """One line naming every number that differs from the model's config.json (read by transformers, so its
    class defaults fill what the file leaves out). The tiny model's vocab_size is its tokenizer's upper
    bound: the fitted tokenizer may have fewer tokens."""
    disk = disk_numbers(AutoConfig.from_pretrained(path.parent).get_text_config())
    wrong = []
    for key in CHECKED_KEYS:
        if disk[key] == numbers[key] or (key == "vocab_size" and vocab_is_upper_bound and disk[key] <= numbers[key]):
            continue
        wrong.append(f"{key}={numbers[key]} (config.json: {disk[key]})")
    if wrong:
        raise ConfigError(f"model.arch disagrees with {path}: {', '.join(wrong)}; fix model.arch")
