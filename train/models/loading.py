"""Model and tokenizer loading: always from a path or hub id, the way TRL and users load them."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import torch
import transformers
from omegaconf import DictConfig
from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig, AutoModelForCausalLM, AutoTokenizer

from train import seams
from train.config.schema import ModelConfig
from train.core.errors import ConfigError
from train.data import synthetic
from train.models.adapters import is_adapter, load_merged
from train.models.tiny import build_tiny_model, check_build_target


def ensure_base_model(model: ModelConfig) -> str:
    """The base model's path or hub id; the embedded tiny model is built there first if needed."""
    if model.tiny is None:
        return model.name_or_path
    spec = dataclasses.asdict(model.tiny)
    # Built from its spec alone (fixed seed 0), like a downloaded model: changing the run's seed must
    # not rebuild the weights at the same path under runs that already use them.
    return str(build_tiny_model(Path(model.name_or_path), spec, synthetic.corpus(0), seed=0))


def check_model_directory(model: DictConfig) -> None:
    """At start: the embedded model's build directory (model.name_or_path) is new, empty or built here, never a
    user's model that the build would overwrite."""
    if model.tiny is not None:
        check_build_target(Path(model.name_or_path))


# Templates known by name (model.chat_template=chatml): ChatML, as Qwen and many fine-tunes use it.
CHAT_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
}


def resolve_chat_template(value: str) -> str:
    """model.chat_template: a known name, a .jinja file, or a Jinja string (`chatml` used to become the
    literal template "chatml")."""
    if value in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[value]
    if "{{" in value or "{%" in value:
        return value
    path = Path(value).expanduser()
    if path.is_file():
        return path.read_text()
    raise ConfigError(f"model.chat_template={value}: not a known template ({', '.join(CHAT_TEMPLATES)}), a file, "
                      "or a Jinja template string")


# What a saved tokenizer consists of, by kind (fast, sentencepiece, BPE vocab, WordPiece): a model directory
# with none of them (weights copied without the tokenizer) made transformers ask for sentencepiece instead.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt", "tokenizer_config.json")


def load_tokenizer(model: ModelConfig, path: str, conversational: bool):
    """The tokenizer at `path`, with model.chat_template when set; chat data (`conversational`) needs a template."""
    if Path(path).is_dir() and not any((Path(path) / name).exists() for name in TOKENIZER_FILES):
        raise ConfigError(f"model {path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...): copy them "
                          "from the model it was trained from (tokenizer.save_pretrained(<dir>))")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, revision=model.revision, trust_remote_code=model.trust_remote_code
        )
    except (OSError, ValueError) as err:  # hub unreachable, gated, or files the library cannot read
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ConfigError(f"model {path}: could not load its tokenizer ({first})") from err
    if model.chat_template is not None:
        tokenizer.chat_template = resolve_chat_template(model.chat_template)
    if conversational and tokenizer.chat_template is None:
        raise ConfigError(
            f"model {path} has no chat template but data.conversational=true: set model.chat_template or data.conversational=false"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# The package each flash attention implementation imports (transformers 5.24, utils/import_utils.py).
FLASH_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}
USE_SDPA = "install it where the job runs, or use model.attn_implementation=sdpa"


def check_attention(model: DictConfig) -> None:
    """At start (also where a job is only submitted, so no GPU is asked for): a flash attention whose package is not
    installed, or an attention the model's class does not implement (Gemma2 has no sdpa). transformers raises
    either as a traceback once the weights start loading. The class is known only when the config is on disk."""
    attn = model.attn_implementation
    package = FLASH_PACKAGES.get(attn)
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError(f"model.attn_implementation={attn} needs the {package} package, which is not "
                          f"installed; {USE_SDPA}")
    if model.tiny is not None or attn is None:
        return
    try:
        config = AutoConfig.from_pretrained(model.name_or_path, revision=model.revision, local_files_only=True,
                                            trust_remote_code=model.trust_remote_code)
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except Exception:  # not on this disk, or remote code: the load says what it must
        return
    if not seams.supports_attention(model_class, attn):
        other = "eager" if attn == "sdpa" else "sdpa"
        raise ConfigError(f"model.attn_implementation={attn}: {model_class.__name__} does not implement it in "
                          f"transformers {transformers.__version__}; use model.attn_implementation={other}")


def load_model(model: ModelConfig, path: str):
    """A full model from `path`; a LoRA adapter directory is loaded onto its base (the absolute path pinned
    in adapter_config.json, train/models/adapters.py) and merged."""
    try:
        if is_adapter(path):
            return load_merged(path, model.dtype, model.attn_implementation, model.trust_remote_code)
        return AutoModelForCausalLM.from_pretrained(
            path,
            dtype=model.dtype,
            attn_implementation=model.attn_implementation,
            trust_remote_code=model.trust_remote_code,
        )
    except ImportError as err:  # e.g. flash-attn installed but no CUDA GPU on this machine
        if model.attn_implementation not in FLASH_PACKAGES:
            raise
        raise ConfigError(f"model.attn_implementation={model.attn_implementation} cannot run here "
                          f"({str(err).splitlines()[0]}); {USE_SDPA}") from None


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def count_parameters_from_config(model_path: str, trust_remote_code: bool) -> int:
    """Parameters of a model from its config alone (built on the meta device: no memory, no weights)."""
    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return count_parameters(model)
