"""Reading prompts (and template values) from files: .jsonl, .json, .csv, .txt, .parquet, each optionally .gz.

A row is a prompt when it is text, or a list of {role, content} chat messages (one chat prompt); a row that is an
object holds its prompt in a field (`column`). A .txt file is one prompt per line; a .json file is a list of rows;
a .jsonl file one row per line; .csv and .parquet rows are read by datasets. Blank prompts are skipped and counted.
Every problem is a one-line ConfigError naming the setting (`where`) and the file.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any, Optional

import datasets

from train.core.errors import ConfigError
from train.data.loading import describe
from train.data.validation import check_messages

TABLE_FORMATS = {".csv": "csv", ".parquet": "parquet"}  # read by datasets; JSON and text are read here
EXTENSIONS = (".jsonl", ".json", ".txt", *TABLE_FORMATS)


def extension(path: str) -> Optional[str]:
    name = path.lower().removesuffix(".gz")
    return next((ext for ext in EXTENSIONS if name.endswith(ext)), None)


def open_text(path: Path):
    gzipped = path.name.lower().endswith(".gz")
    return gzip.open(path, "rt", encoding="utf-8") if gzipped else open(path, encoding="utf-8")


def read_rows(path: str, where: str) -> list[Any]:
    """The file's rows as Python values (text lines, JSON values, or table rows as dicts)."""
    file = Path(path).expanduser()
    ext = extension(path)
    if ext is None:
        raise ConfigError(f"{where}: {path} is not a {', '.join(EXTENSIONS)} file (optionally .gz)")
    if not file.is_file():
        raise ConfigError(f"{where}: {path}: no such file")
    if os.path.getsize(file) == 0:
        raise ConfigError(f"{where}: {path} is empty; give a file with prompts or remove it")
    try:
        if ext == ".txt":
            with open_text(file) as lines:
                return [line.rstrip("\r\n") for line in lines]
        if ext == ".jsonl":
            return json_lines(file, path, where)
        if ext == ".json":
            with open_text(file) as handle:
                rows = json.load(handle)
            if not isinstance(rows, list):
                raise ConfigError(f"{where}: {path} holds a JSON {type(rows).__name__}; a .json file of prompts is a "
                                  "list of rows (texts, chat message lists or objects)")
            return rows
        table = datasets.load_dataset(TABLE_FORMATS[ext], data_files=[str(file)], split="train")
        return list(table)
    except ConfigError:
        raise
    except Exception as err:  # not UTF-8, not JSON, a broken table: one line, not a traceback
        raise ConfigError(f"{where}: could not read {path} ({describe(err)})") from err


def json_lines(file: Path, path: str, where: str) -> list[Any]:
    rows = []
    with open_text(file) as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as err:
                raise ConfigError(f"{where}: {path}:{number} is not JSON ({err}); fix or remove that line") from err
    return rows


def as_prompt(value: Any, where: str) -> Any:
    """A prompt (stripped text, or chat messages reduced to {role, content}); None for a blank one."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        return value.strip()
    if not isinstance(value, list):
        raise ConfigError(f"{where}: not text or a list of chat messages: {str(value)[:80]}")
    problem = check_messages(value, "prompt")
    if problem:
        raise ConfigError(f"{where}: chat messages that cannot be a prompt ({problem.reason}: {problem.field})")
    return [{"role": str(m["role"]), "content": m["content"].strip()} for m in value]


def prompts_of_rows(rows: list[Any], column: str, path: str, where: str) -> tuple[list, int]:
    """(prompts, blank rows skipped). An object row's prompt is its `column` field."""
    prompts, blank = [], 0
    for number, row in enumerate(rows, 1):
        if isinstance(row, dict):
            if column not in row:
                raise ConfigError(f"{where.rsplit('.', 1)[0]}.column={column}: {path} row {number} has no such field "
                                  f"(its fields: {', '.join(map(str, row))})")
            row = row[column]
        prompt = as_prompt(row, f"{where}: {path} row {number}")
        if prompt is None:
            blank += 1
        else:
            prompts.append(prompt)
    return prompts, blank


def read_prompt_file(path: str, column: str, where: str) -> tuple[list, int]:
    """(prompts, blank rows) of one file; a file without prompts is refused."""
    prompts, blank = prompts_of_rows(read_rows(path, where), column, path, where)
    if not prompts:
        raise ConfigError(f"{where}: {path} holds no prompts; give a file with prompts or remove it")
    return prompts, blank


def read_values_table(path: str, where: str) -> dict[str, list[str]]:
    """A table of template values: each column a slot, its non-blank cells that slot's values (columns may
    differ in length: a CSV's empty cells are not values)."""
    values: dict[str, list[str]] = {}
    for number, row in enumerate(read_rows(path, where), 1):
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: {path} row {number} is not a table row; give one column per slot")
        for slot, value in row.items():
            cells = values.setdefault(str(slot), [])
            if value is not None and str(value).strip():
                cells.append(str(value).strip())
    return values
