"""Loading preference data: every source ends as `datasets.Dataset`s in one documented format.

PreferenceData:
  sft:          rows {prompt, completion} (prompt-completion SFT: loss on the completion only)
  train_pairs:  rows {prompt, chosen, rejected}
  test_pairs:   rows {prompt, chosen, rejected}, held out
  eval_prompts: rows {prompt}, held out, for sampling after DPO
With data.conversational=true each field is a list of chat messages, so TRL renders it with the
model's chat template; otherwise plain strings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from omegaconf import DictConfig, OmegaConf

from train.data import synthetic

JUDGES: dict[str, Callable[[str], float]] = {"sentiment": synthetic.judge}


@dataclass
class PreferenceData:
    sft: "datasets.Dataset"  # noqa: F821
    train_pairs: "datasets.Dataset"  # noqa: F821
    test_pairs: "datasets.Dataset"  # noqa: F821
    eval_prompts: "datasets.Dataset"  # noqa: F821
    judge: Optional[Callable[[str], float]]
    files: dict[str, str]
    report: dict = field(default_factory=dict)  # validation report: rows kept, dropped/fixed by reason


def to_conversational(row: dict) -> dict:
    """Plain strings -> chat messages: the prompt is a user turn, each response an assistant turn."""
    out = {}
    for key, value in row.items():
        role = "user" if key == "prompt" else "assistant"
        out[key] = [{"role": role, "content": value}] if key in ("prompt", "completion", "chosen", "rejected") else value
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)  # atomic: concurrent readers see the whole file or none


def generate_synthetic(cfg: DictConfig, root: Path) -> dict[str, str]:
    """Write the generated task as jsonl files, once per (seed, sizes); returns split -> file."""
    spec = OmegaConf.to_container(cfg.data.synthetic)
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


def load_preference_data(cfg: DictConfig, tokenizer=None) -> PreferenceData:
    import datasets

    if cfg.data.name != "synthetic":
        raise NotImplementedError(f"data={cfg.data.name}")
    files = generate_synthetic(cfg, Path(cfg.output_root) / "data")
    # The same loader a local file or hub dataset goes through.
    loaded = {split: datasets.load_dataset("json", data_files=path, split="train") for split, path in files.items()}
    if cfg.data.conversational:
        loaded = {split: ds.map(to_conversational) for split, ds in loaded.items()}
    judge = JUDGES[cfg.data.judge] if cfg.data.judge else None
    return PreferenceData(judge=judge, files=files, **loaded)
