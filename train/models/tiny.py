"""The embedded tiny model: a small Llama built from a config, with a tokenizer fitted offline.

It is saved to a directory and then loaded from that path like any hub model, so the default run
exercises the same code as a 7B model: AutoTokenizer/AutoModel from a path, a chat template, the
trainers' own model loading (TRL builds the reference from the policy's path).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from filelock import FileLock
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from train.core.errors import ConfigError
from train.core.files import read_json
from train.core.ranks import is_main_process

# A chat template in the style of ChatML: the end-of-turn token doubles as EOS, so generation stops
# at the end of the assistant's turn, as it does for Qwen's <|im_end|>.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
# The tiny model is built into model.name_or_path, where a user may have put a model of their own. This
# project writes there only into a new or empty directory, or one holding its marker: OWNER_MARKER, written
# first (a build cut short is still ours), or SPEC_MARKER, written last (complete; also in directories built
# before OWNER_MARKER existed).
OWNER_MARKER = ".built-by-train"
SPEC_MARKER = "tiny_spec.json"


def build_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE fitted on `texts`: task words become single tokens, any other text still encodes."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|end|>",
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_model(path: Path, spec: dict, texts: list[str], seed: int) -> Path:
    """Create the tiny Llama and its tokenizer at `path` (once: an existing complete directory is reused)."""
    marker = path / SPEC_MARKER
    wanted = {**spec, "seed": seed}
    check_build_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Rank 0 builds (under a lock, for concurrent jobs of a sweep); other ranks wait for its marker.
    # Only rank 0 can: once torch.distributed is up, save_pretrained silently skips non-zero ranks.
    if not is_main_process():
        deadline = time.monotonic() + 600
        while not built(marker, wanted):
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank 0 did not build the tiny model at {path} within 600 s")
            time.sleep(0.5)
        return path
    with FileLock(f"{path}.lock"):
        if built(marker, wanted):
            return path
        check_build_target(path)  # again under the lock: the directory may have changed meanwhile
        return _build(path, spec, texts, seed, marker)


def not_ours(path: Path) -> str | None:
    """What `path` holds that this project did not write (None: new, empty or built here)."""
    if not path.exists() and not path.is_symlink():
        return None
    if not path.is_dir():
        return "is a file"
    if (path / OWNER_MARKER).exists() or (path / SPEC_MARKER).exists() or not any(path.iterdir()):
        return None
    return "holds a model this project did not build" if (path / "config.json").exists() else \
        "holds files this project did not write"


def check_build_target(path: Path) -> None:
    """At start (train/pipeline/checks.py) and before building: the tiny model is never written over a
    directory this project did not create."""
    problem = not_ours(Path(path))
    if problem is None:
        return
    if problem.startswith("holds a model"):
        fix = (f"to train it, write conf/model/mine.yaml (name_or_path: {path}, see conf/model/qwen2_5_0_5b.yaml) "
               "and run model=mine recipe=real_model")
    else:
        fix = "give the tiny model a new or empty directory: model.name_or_path=<dir>"
    raise ConfigError(f"model.name_or_path={path} {problem}, but model=tiny builds its toy model there (nothing "
                      f"was written); {fix}")


def built(marker: Path, wanted: dict) -> bool:
    """The model at the marker's directory was built from `wanted`; a damaged marker means build it again."""
    try:
        return read_json(marker) == wanted
    except ConfigError:
        return False


def _build(path: Path, spec: dict, texts: list[str], seed: int, marker: Path) -> Path:
    tokenizer = build_tokenizer(texts, spec["vocab_size"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_attention_heads"],
        max_position_embeddings=spec["max_position_embeddings"],
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    path.mkdir(parents=True, exist_ok=True)
    (path / OWNER_MARKER).write_text("built by train/models/tiny.py: rebuilt here when conf/model/tiny.yaml changes\n")
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    marker.write_text(json.dumps({**spec, "seed": seed}))  # written last: the directory is complete
    return path
