"""Reference log-probs computed once and reused by every run that would compute the same numbers.

TRL 1.16 (`DPOTrainer._precompute_ref_logps`) already caches precomputed reference log-probs in a
datasets cache file keyed by (tokenized dataset fingerprint, hash of the model's weights). Two gaps:
truncation (max_length, truncation_mode) and padding happen later, in the collator, so they are not in
that key and changing max_length silently reuses log-probs of differently truncated sequences; and
under ZeRO-3 the weight hash is taken over already-partitioned (empty) parameters. We keep TRL's
computation (each rank its share of the batches, gathered once, written by the main process) and give
it a complete key and a project location, `<output_root>/ref_cache/<key>.arrow`, so every run of a
sweep and a restarted run find it.

The key covers, explicitly:
  reference  sha256 of the reference's weight files and config.json (memoized by size and mtime),
             the dtype and attention implementation it is loaded with
  data       sha256 of the tokenized prompt/chosen/rejected ids in row order (so the data, the
             tokenizer, the chat template and TRL's dropping of over-long prompts are all in it)
  settings   max_length, truncation_mode, pad_to_multiple_of, padding_free, ld_alpha, pad token id,
             chat template, TRL version
A file is used only if its metadata (written last, after the log-probs) repeats every part of the
key and the row count, and the file's sha256 is the one recorded there (a file changed in place, same
size, would otherwise train every later run of the sweep against wrong numbers); anything
else is recomputed and replaced (written under a run's own name, then renamed over the entry, so
concurrent jobs of a sweep never see a partial file). Partial files of interrupted writes are removed
when the directory is next opened.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow.compute as pc
import trl
from accelerate.utils import broadcast_object_list
from datasets import Dataset, concatenate_datasets
from datasets.fingerprint import Hasher
from huggingface_hub import snapshot_download

from train import seams
from train.core.errors import ConfigError
from train.core.files import atomic_write_text, read_json, remove_orphans, sha256_file

FORMAT = 1
TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
LOGP_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def digest(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def token_ids_fingerprint(dataset) -> str:
    """sha256 of the tokenized columns, row order included (the cached log-probs align by row)."""
    h = hashlib.sha256(str(len(dataset)).encode())
    table = dataset.select_columns(list(TOKEN_COLUMNS)).with_format("arrow")
    for batch in table.iter(batch_size=10_000):
        for column in TOKEN_COLUMNS:
            ids = batch.column(column).combine_chunks()  # chunking depends on how the rows were selected
            h.update(np.asarray(pc.list_value_length(ids), dtype=np.int64).tobytes())
            h.update(np.asarray(ids.flatten(), dtype=np.int64).tobytes())
    return h.hexdigest()


def weights_fingerprint(model_dir: Path, memo_dir: Path) -> str:
    """sha256 of a model directory's weight files and config.json. Hashing 15 GB takes a while, so the
    result is memoized under `memo_dir`, valid while every file keeps its name, size and mtime."""
    files = sorted(p for p in model_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES or p.name == "config.json")
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        raise FileNotFoundError(f"no weight files in {model_dir}")
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    memo = memo_dir / f"weights-{hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:16]}.json"
    try:
        saved = read_json(memo)
    except ConfigError:  # a damaged memo is no memo: the weights are hashed again
        saved = None
    if isinstance(saved, dict) and saved.get("stamp") == stamp and isinstance(saved.get("sha256"), str):
        return saved["sha256"]
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode())
        with open(path, "rb") as f:
            while block := f.read(1 << 24):
                h.update(block)
    memo_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(memo, json.dumps({"stamp": stamp, "sha256": h.hexdigest()}))
    return h.hexdigest()


def local_model_dir(name_or_path: str, revision: str | None) -> Path | None:
    """The directory the weights were loaded from: the path itself, or the hub cache's snapshot."""
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    try:
        return Path(snapshot_download(name_or_path, revision=revision, local_files_only=True))
    except Exception:  # not in the local hub cache: the caller falls back to hashing the loaded module
        return None


def key_parts(trainer, dataset, memo_dir: Path) -> dict[str, Any]:
    """Everything the reference log-probs of `dataset` depend on (see the module docstring)."""
    args, model = trainer.args, trainer.model
    tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)  # a processor holds one
    config = model.config
    model_dir = local_model_dir(config.name_or_path, (args.model_init_kwargs or {}).get("revision"))
    # TRL's own hash of the loaded module is the fallback for a model not on local disk.
    weights = weights_fingerprint(model_dir, memo_dir) if model_dir else f"module:{seams.precompute_model_hash(trainer)}"
    return {
        "format": FORMAT,
        "reference": {
            "weights": weights,
            "dtype": str(model.dtype),
            "attn_implementation": seams.attn_implementation(config),
        },
        "data": {"rows": len(dataset), "token_ids": token_ids_fingerprint(dataset)},
        "settings": {
            "max_length": args.max_length,
            "truncation_mode": args.truncation_mode,
            "pad_to_multiple_of": args.pad_to_multiple_of,
            "padding_free": args.padding_free,
            "ld_alpha": args.ld_alpha,
            "pad_token_id": tokenizer.pad_token_id,
            "chat_template": tokenizer.chat_template,
            "trl": trl.__version__,
        },
    }


class ReferenceLogpsCache:
    """`<directory>/<key>.arrow` (the two log-prob columns, one row per pair) and `<key>.json`
    (the key's parts, the row count and the arrow file's sha256, written last: its presence means the
    arrow file is complete)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def arrow_path(self, key: str) -> Path:
        return self.directory / f"{key}.arrow"

    def meta_path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def lookup(self, key: str, parts: dict) -> Path | None:
        """The arrow file for `key`, only if its metadata matches `parts`, its bytes match the recorded
        sha256 (read in 1 MiB blocks: 2 floats per pair, small next to the pass it saves) and it holds every row."""
        arrow, meta = self.arrow_path(key), self.meta_path(key)
        if not (arrow.exists() and meta.exists()):
            return None
        rows = parts["data"]["rows"]
        try:
            saved = json.loads(meta.read_text())
        except Exception:  # unreadable: treated as absent, recomputed
            return None
        if saved.get("parts") != json.loads(json.dumps(parts, default=str)) or saved.get("rows") != rows:
            return None
        # Before the file is opened: a changed byte may be in the log-probs (opens fine, wrong numbers) or in
        # the framing (fails to open); either way the entry is recomputed, saying so. An entry without a
        # checksum predates them and is not trusted either.
        if saved.get("sha256") != sha256_file(arrow):
            print(f"reference log-probs: {arrow} fails its checksum; recomputing", flush=True)
            return None
        try:
            table = Dataset.from_file(str(arrow))
        except Exception:  # unreadable or truncated: treated as absent, recomputed
            return None
        if table.num_rows != rows or not set(LOGP_COLUMNS) <= set(table.column_names):
            return None
        return arrow

    def commit(self, key: str, parts: dict, seconds: float) -> None:
        # Hashed as it stands under its final name: if a concurrent job renamed its own file over it in
        # between, the pair may disagree, and the next lookup recomputes rather than trusting either.
        record = {"key": key, "parts": parts, "rows": parts["data"]["rows"], "sha256": sha256_file(self.arrow_path(key)),
                  "compute_s": round(seconds, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_text(self.meta_path(key), json.dumps(record, indent=1, default=str))


def precompute_with_cache(trainer, compute: Callable, dataset, name: str, batch_size: int, directory: Path):
    """TRL's `_precompute_ref_logps` (`compute`) behind the project's cache: returns `dataset` with the
    ref_chosen_logps / ref_rejected_logps columns, computed (distributed, by TRL) only on a miss."""
    accelerator, cache = trainer.accelerator, ReferenceLogpsCache(directory)
    main = accelerator.is_main_process
    if seams.has_index_mapping(dataset):
        # TRL filtered the rows (over-long prompts): a column-wise concatenation would then copy every input,
        # our log-probs file included, into derived cache files. Flattening first copies only the inputs;
        # one rank at a time, since ranks whose datasets share a fingerprint write the same file.
        if main:
            dataset = dataset.flatten_indices()
        accelerator.wait_for_everyone()
        if not main:
            dataset = dataset.flatten_indices()
    # Decided on the main process and broadcast: every rank must take the same branch, since a miss
    # runs collectives (ranks could disagree, e.g. a file appearing between their checks).
    decision = None
    if main:
        directory.mkdir(parents=True, exist_ok=True)
        remove_orphans(directory)  # partial entries of interrupted passes; never one a live job is writing
        parts = key_parts(trainer, dataset, directory)
        key = digest(parts)
        # TRL broadcasts the main process's fingerprint too (dataset fingerprints differ between ranks:
        # TRL's length filter hashes the rank-specific DPOConfig), so the redirect below must match it.
        trl_fingerprint = Hasher.hash((seams.dataset_fingerprint(dataset), key))
        decision = (key, parts, cache.lookup(key, parts) is not None, trl_fingerprint, uuid.uuid4().hex[:8])
    key, parts, hit, trl_fingerprint, token = broadcast_object_list([decision])[0]
    arrow = cache.arrow_path(key)
    if not hit:
        # Written under a name of this run's own, then renamed over the entry: jobs of a sweep that miss
        # together never delete or half-read each other's file (a renamed-over file stays valid for readers).
        work = directory / f"{key}.{token}.arrow"
        start = time.perf_counter()
        # TRL's fingerprint becomes hash(dataset fingerprint, our key), and its cache file our path. Only that
        # one file is redirected: datasets asks the same method for other files (flatten_indices) too.
        seams.set_precompute_model_hash(trainer, key)
        with seams.cache_file_redirected(dataset, trl_fingerprint, str(work)):
            compute(dataset, name, batch_size)
        # TRL ends the pass with a barrier and then every rank opens the file: the rename waits until all
        # ranks have opened it (an open file survives the rename), or a slower rank finds it gone.
        accelerator.wait_for_everyone()
        if main:
            seconds = time.perf_counter() - start
            os.replace(work, arrow)
            cache.commit(key, parts, seconds)  # last: the entry counts from here on
            print(f"reference log-probs: computed {name} ({len(dataset)} pairs on {accelerator.num_processes} "
                  f"process(es)) in {seconds:.1f} s -> {arrow}", flush=True)
        accelerator.wait_for_everyone()
    elif main:
        print(f"reference log-probs: reusing {arrow} ({name}, {len(dataset)} pairs)", flush=True)
    return concatenate_datasets([dataset, Dataset.from_file(str(arrow))], axis=1)

