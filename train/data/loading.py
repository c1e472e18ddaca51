"""Reading a source's native rows through the datasets library: a hub id, or local files.

data.source is
  a hub id (owner/name)      datasets.load_dataset(id, name=data.subset, data_dir=data.data_dir,
                             revision=data.revision): every split the repository has;
  a local file or hf:// URL  one .jsonl/.json/.parquet/.csv file (optionally .gz): split "train"; lines of a
                             local .jsonl (or CSV rows) that do not parse are left out and counted (lines.py);
  a local directory          every such file below it; the split is the file name without its shard
                             suffix and extension (train.jsonl, test-00000-of-00001.parquet,
                             train_prefs.jsonl), so a copy of a hub repository keeps its split names.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import datasets

from train.config.schema import DataConfig
from train.core.errors import ConfigError
from train.core.files import memoized_sha256
from train.core.paths import looks_like_local_path
from train.data.lines import without_bad_rows

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
SHARD_SUFFIX = re.compile(r"-\d{5}-of-\d{5}$")


def file_format(path: str) -> str | None:
    name = path.lower().removesuffix(".gz")
    return next((fmt for ext, fmt in FORMATS.items() if name.endswith(ext)), None)


def split_name(path: Path) -> str:
    stem = path.name.lower().removesuffix(".gz")
    stem = stem[: stem.rindex(".")] if "." in stem else stem
    return SHARD_SUFFIX.sub("", stem)


def looks_like_path(source: str) -> bool:
    return looks_like_local_path(source) or file_format(source) is not None


def local_files(source: str) -> dict[str, list[str]]:
    """split -> files of a local file or directory."""
    path = Path(source).expanduser()
    if path.is_file():
        if file_format(str(path)) is None:
            raise ConfigError(f"data.source={source}: not a .jsonl, .json, .parquet or .csv file")
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and file_format(p.name) and not p.name.startswith("."))
    if not files:
        raise ConfigError(f"data.source={source}: no .jsonl, .json, .parquet or .csv files in this directory")
    splits: dict[str, list[str]] = {}
    for file in files:
        splits.setdefault("train" if path.is_file() else split_name(file), []).append(str(file))
    empty = [f for fs in splits.values() for f in fs if os.path.getsize(f) == 0]
    if empty:  # the json builder fails on one with a bare StopIteration
        raise ConfigError(f"data.source={source}: {empty[0]} is empty; remove it or point data.source at the data")
    if len(splits) == 1:  # one kind of file, whatever its name (all.jsonl, comparisons.parquet): the training rows
        return {"train": next(iter(splits.values()))}
    if "all" in splits:
        raise ConfigError(f"data.source={source}: `all` cannot name a split (datasets reserves it); point data.source at the file")
    return splits


def load_files(fmt: str, files: list[str], split: str, skipped: dict) -> "datasets.Dataset":  # noqa: F821
    """One split's files; when a few rows do not parse, the rest (where the others were goes into `skipped`)."""
    # datasets logs a failed parse as an error before raising; a row skipped below is counted in the report instead.
    builder_log = logging.getLogger(f"datasets.packaged_modules.{fmt}.{fmt}")
    level = builder_log.level
    try:
        builder_log.setLevel(logging.CRITICAL)
        return datasets.load_dataset(fmt, data_files=files, split="train")
    except Exception:
        salvaged = without_bad_rows(fmt, files)
        if salvaged is None:
            raise
        skipped[split] = salvaged[1]
        return salvaged[0]
    finally:
        builder_log.setLevel(level)


def read_source(data: DataConfig) -> tuple[dict[str, "datasets.Dataset"], dict[str, list[str]]]:  # noqa: F821
    """(split name -> native rows (a datasets.Dataset), each capped at data.max_rows; split name -> where
    lines that could not be parsed were: lines.py left them out, the report counts them)."""
    skipped: dict = {}
    if data.source is None:
        raise ConfigError(f"data.source is required by data={data.name}: give a hub id, a file or a directory")
    source = str(data.source)
    try:
        if source.startswith("hf://"):
            if file_format(source) is None:
                raise ConfigError(f"data.source={source}: an hf:// source must name .jsonl/.json/.parquet/.csv files")
            loaded = datasets.load_dataset(file_format(source), data_files={data.train_split: source})
        elif Path(source).expanduser().exists():
            splits = local_files(source)
            formats = {file_format(f) for files in splits.values() for f in files}
            if len(formats) > 1:
                raise ConfigError(f"data.source={source}: mixes file formats ({', '.join(sorted(formats))}); keep one")
            fmt = formats.pop()
            # One split at a time: datasets would cast every split to the types inferred from the first,
            # and a column that is all null in one split (summarize_from_feedback's info.article) breaks that.
            loaded = {name: load_files(fmt, files, name, skipped) for name, files in splits.items()}
            if len(loaded) == 1:  # one file (or one kind of file) is the training split, whatever the hub calls it
                skipped = {data.train_split: skipped[name] for name in skipped}
                loaded = {data.train_split: next(iter(loaded.values()))}
        elif looks_like_path(source):
            raise ConfigError(f"data.source={source}: no such file or directory")
        else:
            loaded = datasets.load_dataset(source, name=data.subset, data_dir=data.data_dir, revision=data.revision)
    except ConfigError:
        raise
    except Exception as err:  # network, auth, a bad file: the user needs one line, not a traceback
        hint = "" if Path(source).expanduser().exists() else "; without the hub, download it and pass data.source=<local dir>"
        raise ConfigError(f"data.source={source}: could not load it ({describe(err)}){hint}") from err
    if data.max_rows is not None:
        loaded = {name: ds.select(range(min(len(ds), data.max_rows))) for name, ds in loaded.items()}
        skipped = {name: [(where, before) for where, before in lines if before < data.max_rows] for name, lines in skipped.items()}
    return dict(loaded), {name: [where for where, _ in lines] for name, lines in skipped.items()}


def describe(err: BaseException) -> str:
    """The exception and, when another one caused it, the root cause: datasets often wraps the useful
    message ("Couldn't cast array of type string to null") in a generic one."""
    def line(e: BaseException) -> str:
        return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"

    root = err
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__
    return line(err) if root is err else f"{line(err)} <- {line(root)}"


def fingerprint(data: DataConfig, memo_dir: Path) -> list:
    """What identifies the source's content for the caches: a hub id as given (its revision is in the config);
    local files as split -> their sha256s in reading order, memoized by size and mtime under `memo_dir`. Never
    the path: a copied or moved source hits the same caches, a changed file misses."""
    source = data.source
    if source is None or not Path(str(source)).expanduser().exists():
        return [source]
    return [[split, [memoized_sha256(Path(f), memo_dir) for f in files]]
            for split, files in sorted(local_files(str(source)).items())]
