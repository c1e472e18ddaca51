"""LoRA adapters (sft.lora, dpo.lora): their peft config, the checks at start, the base model's path pinned into
the saved adapter, and merged full weights.

An adapter directory is only half a model: peft's AutoPeftModelForCausalLM loads its base from
`base_model_name_or_path` in adapter_config.json, which TRL writes as the string the trainer was given (a
relative `outputs/models/...` when SFT is off). Pinned to the absolute path (and the hub revision for a hub
base), the adapter loads from any working directory and after its run directory is moved.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig
from peft import LoraConfig, PeftModel
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from train.core.errors import ConfigError
from train.core.files import read_json
from train.core.paths import looks_like_local_path
from train.config.choices import Reference
from train.config.schema import LoraSpec, MainConfig, ModelConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_DIR = "adapter"  # next to merged full weights: sft/<key>/adapter/, policy/adapter/ with dpo.lora.merge
ALL_LINEAR = "all-linear"  # peft's shorthand for every linear layer but the output head (TRL's lora_target_modules too)


def lora_config(spec: LoraSpec) -> LoraConfig:
    targets = list(spec.target_modules)
    # peft honours the shorthand only as a plain string; in a list it would look for a module named "all-linear".
    return LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                      target_modules=ALL_LINEAR if targets == [ALL_LINEAR] else targets, task_type="CAUSAL_LM")


def active_lora_specs(cfg: MainConfig) -> dict[str, LoraSpec]:
    """The LoRA settings this run trains with, by config key."""
    specs = {}
    if cfg.sft.enabled and cfg.sft.lora.enabled:
        specs["sft.lora"] = cfg.sft.lora
    if cfg.dpo.enabled and cfg.dpo.reference == Reference.lora:
        specs["dpo.lora"] = cfg.dpo.lora
    return specs


def check_lora_settings(cfg: DictConfig) -> None:
    """Combinations that would train nothing or write nothing, refused in one line before anything starts."""
    if cfg.sft.lora.enabled and not cfg.sft.enabled:
        raise ConfigError("sft.lora.enabled=true but sft.enabled=false: no SFT runs to train adapters; "
                          "set sft.enabled=true or drop sft.lora.enabled")
    if cfg.dpo.lora.merge and cfg.dpo.reference != Reference.lora:
        raise ConfigError(f"dpo.lora.merge=true but dpo.reference={cfg.dpo.reference}: only a LoRA policy has "
                          "adapters to merge (the policy is already full weights); "
                          "set dpo.reference=lora or drop dpo.lora.merge")
    for where, spec in active_lora_specs(cfg).items():
        if spec.r < 1 or spec.alpha <= 0 or not 0 <= spec.dropout < 1:
            raise ConfigError(f"{where}: r={spec.r}, alpha={spec.alpha}, dropout={spec.dropout}: need r >= 1, "
                              "alpha > 0 and 0 <= dropout < 1")
        if not spec.target_modules:
            raise ConfigError(f"{where}.target_modules is empty: name the layers to adapt, "
                              f"e.g. [q_proj,v_proj] or [{ALL_LINEAR}]")


def check_target_modules(cfg: MainConfig, base_path: str) -> None:
    """Every target module name exists in the model: peft fails only when none matches, so a misspelt name
    among good ones was silently left without adapters. The model is built on the meta device (no weights)."""
    specs = active_lora_specs(cfg)
    if not specs:
        return
    remote_code = cfg.model.trust_remote_code
    config = AutoConfig.from_pretrained(base_path, revision=cfg.model.revision, trust_remote_code=remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=remote_code)
    names = [name for name, _ in model.named_modules()]
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    for where, spec in specs.items():
        # peft's rule for a list: a module matches an entry equal to its name or to a dotted suffix of it.
        missing = [t for t in spec.target_modules
                   if t != ALL_LINEAR and not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            raise ConfigError(f"{where}.target_modules: {', '.join(missing)} not in {base_path}; its linear layers: "
                              f"{', '.join(linear)} (or [{ALL_LINEAR}])")


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def pin_base_model(adapter_dir: Path, base: str, revision: str | None) -> None:
    """adapter_config.json names its base by absolute path (a hub id stays, with its revision)."""
    config_path = Path(adapter_dir) / ADAPTER_CONFIG
    config = read_json(config_path)
    if Path(base).expanduser().is_dir():
        config["base_model_name_or_path"] = str(Path(base).expanduser().resolve())
    else:
        config["base_model_name_or_path"], config["revision"] = base, revision
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


def base_model_of(adapter_dir: str | Path) -> tuple[str, str | None]:
    """(base path or hub id, revision) from adapter_config.json; a local base that is gone is one line."""
    config = read_json(Path(adapter_dir) / ADAPTER_CONFIG)
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not isinstance(base, str):
        raise ConfigError(f"LoRA adapter {adapter_dir}: {ADAPTER_CONFIG} names no base model "
                          "(base_model_name_or_path); restore the file")
    if looks_like_local_path(base) and not Path(base).expanduser().is_dir():
        raise ConfigError(f"LoRA adapter {adapter_dir}: its base model {base} is gone (moved or deleted?); put it "
                          f"back, or set base_model_name_or_path in {Path(adapter_dir) / ADAPTER_CONFIG} "
                          "to where it is now")
    return base, config.get("revision")


def load_merged(adapter_dir: str | Path, dtype: str, attn_implementation: str, trust_remote_code: bool):
    """Base + adapter merged into one plain model (peft merge_and_unload): what AutoPeftModelForCausalLM gives,
    with our attention and remote-code settings for the base."""
    base, revision = base_model_of(adapter_dir)
    model = AutoModelForCausalLM.from_pretrained(base, revision=revision, dtype=dtype,
                                                 attn_implementation=attn_implementation,
                                                 trust_remote_code=trust_remote_code)
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()


def merge_adapter(adapter_dir: Path, out_dir: Path, model_cfg: ModelConfig) -> Path:
    """Merged full weights and the tokenizer written to `out_dir`, loadable by AutoModelForCausalLM. Main process
    only, from the saved adapter: under ZeRO-3 save_model has already gathered it from every rank."""
    # With a trainer's ZeRO-3 config still registered, from_pretrained would partition the base with zero.Init
    # and wait for ranks that are not loading; the next trainer's TrainingArguments registers its own again.
    unset_hf_deepspeed_config()
    merged = load_merged(adapter_dir, model_cfg.dtype, model_cfg.attn_implementation, model_cfg.trust_remote_code)
    merged.save_pretrained(str(out_dir))
    # The tokenizer as the trainer saved it next to the adapter (pad token and chat template included), else the base's.
    saved_with_adapter = (Path(adapter_dir) / "tokenizer_config.json").is_file()
    source = str(adapter_dir) if saved_with_adapter else base_model_of(adapter_dir)[0]
    AutoTokenizer.from_pretrained(source, trust_remote_code=model_cfg.trust_remote_code).save_pretrained(str(out_dir))
    return out_dir
