"""Loading preference data: every source ends as `datasets.Dataset`s in one documented format.

PreferenceData:
  sft:          rows {prompt, completion} (prompt-completion SFT: loss on the completion only)
  train_pairs:  rows {prompt, chosen, rejected}
  test_pairs:   rows {prompt, chosen, rejected}, held out
  eval_prompts: rows {prompt}, held out, for sampling after DPO
With data.conversational=true each field is a list of chat messages, so TRL renders it with the
model's chat template (prompts of chat sources keep their multi-turn history; responses are one
assistant message); otherwise plain strings. `report` is the validation report (validation.py).

Sources are chosen by data.name (sources.py, one conf/data/<name>.yaml each). Conversion, validation
and tokenization run once per (data config, tokenizer, max_length): the result is written under
<output_root>/data/ and every other rank, and every later run with the same inputs, reads it back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import datasets
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf
from trl import DPOConfig, SFTConfig

from train.config.schema import MainConfig
from train.core.errors import ConfigError
from train.core.files import read_json, remove_orphans, sha256_file, write_jsonl
from train.core.ranks import is_main_process
from train.data import synthetic
from train.data.build import build
from train.data.loading import fingerprint, read_source
from train.data.sources import get_source, resolve_options
from train.data.validation import format_report, threshold_message

# Rule-based judges by name (judge=<name>; train/models/judges.py): response text -> reward.
JUDGES: dict[str, Callable[[str], float]] = {"sentiment": synthetic.judge}
SPLITS = ("sft", "train_pairs", "test_pairs", "eval_prompts")
COLUMNS = {"sft": ("prompt", "completion"), "eval_prompts": ("prompt",)}


@dataclass
class PreferenceData:
    sft: "datasets.Dataset"  # noqa: F821
    train_pairs: "datasets.Dataset"  # noqa: F821
    test_pairs: "datasets.Dataset"  # noqa: F821
    eval_prompts: "datasets.Dataset"  # noqa: F821
    files: dict[str, str]
    report: dict = field(default_factory=dict)  # validation report: rows kept, dropped/fixed by reason

    def content_fingerprint(self, split: str = "train_pairs") -> str:
        """sha256 of a prepared split's file (DPO's training pairs, or SFT's rows): what a resumed run must train
        on. Unlike datasets' fingerprint of the loaded split, it does not change with the file's path (a copied
        output root)."""
        return sha256_file(Path(self.files[split]))


def check_config(cfg: DictConfig) -> None:
    """The data group's choices, against the registries that define them (sources)."""
    if cfg.data.name == "synthetic" and cfg.data.synthetic is None:
        raise ConfigError("data.synthetic is required by data=synthetic: restore it from conf/data/synthetic.yaml")
    resolve_options(OmegaConf.to_object(cfg.data))


def generate_synthetic(cfg: MainConfig, root: Path) -> dict[str, str]:
    """Write the generated task as jsonl files, once per (seed, sizes); returns split -> file."""
    spec = dataclasses.asdict(cfg.data.synthetic)
    key = hashlib.sha256(json.dumps({**spec, "seed": cfg.seed}, sort_keys=True).encode()).hexdigest()[:12]
    directory = root / f"synthetic-{key}"
    directory.mkdir(parents=True, exist_ok=True)
    splits = {
        "sft": lambda: synthetic.make_sft_rows(spec["num_sft"], cfg.seed),
        "train_pairs": lambda: synthetic.make_preference_rows(spec["num_pairs"], cfg.seed, "train"),
        "test_pairs": lambda: synthetic.make_preference_rows(spec["num_test_pairs"], cfg.seed, "test"),
        "eval_prompts": lambda: synthetic.make_eval_prompts(spec["num_eval_prompts"], cfg.seed),
    }
    files = {}
    for split, make in splits.items():
        path = directory / f"{split}.jsonl"
        if not path.exists():
            write_jsonl(path, make())
        files[split] = str(path)
    return files


def read_native(cfg: MainConfig) -> tuple[dict, dict]:
    """(split -> native rows: the generated task, or the configured source through the datasets library;
    split -> where lines of the source did not parse)."""
    if cfg.data.name == "synthetic":
        files = generate_synthetic(cfg, Path(cfg.output_root) / "data")
        # Split names as conf/data/synthetic.yaml refers to them (train_split, test_split, ...).
        names = {"train_pairs": "train", "test_pairs": "test", "sft": "sft", "eval_prompts": "eval_prompts"}
        return {names[s]: datasets.load_dataset("json", data_files=p, split="train") for s, p in files.items()}, {}
    return read_source(cfg.data)


def trainer_lengths(cfg: MainConfig) -> dict:
    """max_length and truncation of the run's trainers (TRL's own defaults where the config is silent)."""
    def setting(stage: str, config_cls, key: str):
        args = getattr(cfg, stage).args
        return args[key] if key in args else config_cls.__dataclass_fields__[key].default

    return {
        "dpo_max_length": setting("dpo", DPOConfig, "max_length"),
        "truncation_mode": setting("dpo", DPOConfig, "truncation_mode"),
        "sft_max_length": setting("sft", SFTConfig, "max_length"),
    }


def tokenizer_identity(tokenizer) -> Optional[str]:
    if tokenizer is None:
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    parts = [type(tokenizer).__name__, vocab, str(tokenizer.chat_template), str(tokenizer.eos_token)]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def hash_memo_dir(cfg: MainConfig) -> Path:
    """Where the sha256s of local source and model files are memoized (swept with the rest of data/)."""
    return Path(cfg.output_root) / "data" / "sha256"


def data_identity(cfg: MainConfig) -> dict:
    """The data config as cache keys see it: data.source by content when it is local, so a copied or moved
    source keeps its prepared data and its SFT model; a hub id stays as given."""
    data = dataclasses.asdict(cfg.data)
    data["source"] = fingerprint(cfg.data, hash_memo_dir(cfg))
    return data


def cache_key(cfg: MainConfig, tokenizer, lengths: dict) -> str:
    code = sorted((p.name, p.read_bytes()) for p in Path(__file__).parent.glob("*.py"))  # a converter edit invalidates
    inputs = {
        "data": data_identity(cfg),
        "seed": cfg.seed,
        "lengths": lengths,
        "tokenizer": tokenizer_identity(tokenizer),
        "code": hashlib.sha256(repr(code).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:12]


def prepare(cfg: MainConfig, tokenizer=None) -> tuple[dict[str, str], dict]:
    """Convert, validate and write the four splits once; returns (split -> jsonl file, report).

    A file lock, not a collective barrier: ranks waiting for a large dataset to be converted sit in
    the lock, not in a torch.distributed call that times out, and every node with its own disk
    converts for itself. The report is written last, so its presence means the directory is complete."""
    source, opts = get_source(cfg.data.name), resolve_options(cfg.data)
    lengths = trainer_lengths(cfg)
    # Temp files of interrupted writes (prepared splits, generated data, hash memos) and stale locks.
    remove_orphans(Path(cfg.output_root) / "data", depth=3)
    directory = Path(cfg.output_root) / "data" / "prepared" / f"{cfg.data.name}-{cache_key(cfg, tokenizer, lengths)}"
    files = {split: str(directory / f"{split}.jsonl") for split in SPLITS}
    report_path = directory / "report.json"
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{directory}.lock"):
        if not readable_report(report_path):  # absent, or damaged (then converted again)
            try:
                native, unreadable = read_native(cfg)
                rows, report = build(cfg, source, opts, native, tokenizer, lengths, unreadable)
            except UnicodeDecodeError as err:  # datasets decodes text columns lazily, row by row
                raise ConfigError(f"data.source={cfg.data.source}: not UTF-8 text ({err.reason}: byte "
                                  f"{err.object[err.start:err.start + 1]!r}); re-save the file as UTF-8") from err
            directory.mkdir(exist_ok=True)
            for split in SPLITS:
                write_jsonl(Path(files[split]), rows[split])
            write_jsonl(report_path, [report])
    return files, read_json(report_path)


def readable_report(path: Path) -> bool:
    try:
        return isinstance(read_json(path), dict)
    except ConfigError:
        return False


def read_split(path: str, split: str):
    if os.path.getsize(path) == 0:  # the json builder refuses an empty file
        return datasets.Dataset.from_dict({c: [] for c in COLUMNS.get(split, ("prompt", "chosen", "rejected"))})
    return datasets.load_dataset("json", data_files=path, split="train")


def load_preference_data(cfg: MainConfig, tokenizer=None) -> PreferenceData:
    """The single entry point: prints the validation report, stops above data.max_drop_fraction."""
    files, report = prepare(cfg, tokenizer)
    if is_main_process():
        print(format_report(report), flush=True)
    problem = threshold_message(report)
    if problem:
        raise ConfigError(problem)
    loaded = {split: read_split(path, split) for split, path in files.items()}
    eval_prompts = loaded["eval_prompts"]
    loaded["eval_prompts"] = eval_prompts.select(range(min(len(eval_prompts), cfg.eval.num_prompts)))
    return PreferenceData(files=files, report=report, **loaded)
