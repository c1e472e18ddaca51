"""Prompts for an on-policy round, from up to four sources (train/config/onpolicy_schema.py PromptsSpec):

  data       the data group's own prompts (the caller passes them in)
  files      prompt files (prompt_files.py: .jsonl/.json/.csv/.txt/.parquet, optionally .gz)
  templates  a template's `{slot}` fields filled with a seeded sample of distinct value combinations
  sql        a seeded random sample of a database query's rows (datasets.Dataset.from_sql)

A prompt seen earlier (same text, or the same chat messages), in its own source or in an earlier one in that
order, is a duplicate and never taken twice. How many each source gives:
  - mix set: source s takes mix[s] / sum(mix) of max_prompts, rounded by largest remainder (the shares add up
    to max_prompts exactly; equal remainders go to the earlier source). A source with fewer prompts than its
    share gives them all, and the report says so; its shortfall is not moved to the others, so the stated
    proportions hold. A source left out of mix gives none.
  - no mix: every source's prompts pooled; with max_prompts, a seeded sample of the pool.
Everything is deterministic for a seed. The report says, per source: available (prompts read), duplicates,
taken, and any notes (a share it could not fill, a count above what it has); `total` sums them.
"""

from __future__ import annotations

import math
import random
import sqlite3
import string
import tempfile
from pathlib import Path
from urllib.parse import quote

import datasets
from omegaconf import DictConfig, OmegaConf

from train.config.onpolicy_schema import PromptsSpec
from train.core.errors import ConfigError
from train.data.loading import describe
from train.data.prompt_files import as_prompt, read_prompt_file, read_values_table
from train.data.rows import prompt_key

SOURCES = ("data", "files", "templates", "sql")  # also the order in which duplicates are resolved


def as_spec(spec) -> DictConfig:
    """A PromptsSpec, a dict or a composed DictConfig, type-checked against the schema."""
    try:
        return OmegaConf.merge(OmegaConf.structured(PromptsSpec), spec)
    except Exception as err:  # omegaconf's validation errors are multi-line
        raise ConfigError(" ".join(str(err).split())) from err


def select_prompts(spec, data_prompts: list, seed: int, where: str = "prompts") -> tuple[list, dict]:
    """(prompts, report): the round's prompts, text or chat messages, in source order (within a source, in the
    order it gives them). `where` is the spec's place in the config, named in every error."""
    spec = as_spec(spec)
    loaded = load_sources(spec, data_prompts, seed, where)
    seen: set = set()
    candidates, report = {}, {}
    for source, (prompts, notes) in loaded.items():
        fresh = []
        for prompt in prompts:
            key = prompt_key(prompt)
            if key not in seen:
                seen.add(key)
                fresh.append(prompt)
        candidates[source] = fresh
        report[source] = {"available": len(prompts), "duplicates": len(prompts) - len(fresh), "taken": 0,
                          "notes": notes}
    picked = pick(spec, candidates, report, seed, where)
    prompts = [candidates[source][i] for source in candidates for i in picked[source]]
    if not prompts:
        raise ConfigError(f"{where}: no prompts selected; raise {where}.max_prompts or give the sources in "
                          f"{where}.mix a share")
    for source in candidates:
        report[source]["taken"] = len(picked[source])
    total = {key: sum(report[s][key] for s in candidates) for key in ("available", "duplicates", "taken")}
    report["total"] = {**total, "notes": [f"fewer than max_prompts={spec.max_prompts}"]
                       if spec.max_prompts is not None and len(prompts) < spec.max_prompts else []}
    return prompts, report


def load_sources(spec: DictConfig, data_prompts: list, seed: int, where: str) -> dict[str, tuple[list, list]]:
    """source -> (its prompts, notes), for the sources the spec turns on."""
    loaded = {}
    if spec.data:
        prompts = [p for p in (as_prompt(p, f"{where}.data") for p in data_prompts) if p is not None]
        if not prompts:
            raise ConfigError(f"{where}.data=true but the data gives no prompts; set {where}.data=false")
        loaded["data"] = (prompts, [])
    if len(spec.files):  # an empty DictConfig or ListConfig is truthy
        prompts, notes = [], []
        for path in spec.files:
            read, blank = read_prompt_file(str(path), spec.column, f"{where}.files")
            prompts += read
            if blank:
                notes.append(f"{path}: {blank} blank rows skipped")
        loaded["files"] = (prompts, notes)
    if spec.templates.template is not None or len(spec.templates["values"]) or spec.templates.values_file:
        loaded["templates"] = fill_template(spec.templates, seed, f"{where}.templates")
    if spec.sql.url is not None or spec.sql.query is not None:
        loaded["sql"] = query_prompts(spec.sql, seed, f"{where}.sql")
    if not loaded:
        raise ConfigError(f"{where}: no prompt source; set {where}.data=true, {where}.files, "
                          f"{where}.templates.template or {where}.sql.url")
    return loaded


def pick(spec: DictConfig, candidates: dict[str, list], report: dict, seed: int, where: str) -> dict[str, list[int]]:
    """source -> indices into its candidates, ascending."""
    limit = spec.max_prompts
    if limit is not None and limit < 1:
        raise ConfigError(f"{where}.max_prompts={limit}: must be at least 1 (null: every prompt)")
    weights = {s: w for s, w in OmegaConf.to_container(spec.mix).items() if w is not None}
    if not weights:
        pool = [(s, i) for s in candidates for i in range(len(candidates[s]))]
        if limit is not None and limit < len(pool):
            pool = random.Random(f"{seed}/pool").sample(pool, limit)
        return {s: sorted(i for source, i in pool if source == s) for s in candidates}
    shares = mix_shares(weights, candidates, limit, where)
    picked = {}
    for source, fresh in candidates.items():
        share = shares.get(source, 0)
        report[source]["share"] = share
        if source not in weights:
            report[source]["notes"].append(f"not in {where}.mix: none taken")
        elif share > len(fresh):
            report[source]["notes"].append(f"fewer prompts than its share: {len(fresh)} of {share} "
                                           f"({report[source]['duplicates']} duplicates left out)")
        take = min(share, len(fresh))
        picked[source] = sorted(random.Random(f"{seed}/{source}").sample(range(len(fresh)), take))
    return picked


def mix_shares(weights: dict[str, float], candidates: dict, limit, where: str) -> dict[str, int]:
    """Largest-remainder split of max_prompts by the mix weights."""
    if limit is None:
        raise ConfigError(f"{where}.mix needs {where}.max_prompts: the shares are proportions of it")
    for source, weight in weights.items():
        if weight < 0:
            raise ConfigError(f"{where}.mix.{source}={weight}: a share cannot be negative")
        if weight > 0 and source not in candidates:
            raise ConfigError(f"{where}.mix.{source}={weight} but {where}.{source} gives no prompts: set "
                              f"{where}.{source} or remove its share")
    total = sum(weights.values())
    if total <= 0:
        raise ConfigError(f"{where}.mix: every share is 0; give at least one source a share above 0")
    exact = {s: limit * w / total for s, w in weights.items()}
    shares = {s: math.floor(x) for s, x in exact.items()}
    by_remainder = sorted(exact, key=lambda s: (-(exact[s] - shares[s]), SOURCES.index(s)))
    for source in by_remainder[: limit - sum(shares.values())]:
        shares[source] += 1
    return shares


def template_slots(template: str, where: str) -> list[str]:
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:  # a lone { or }
        raise ConfigError(f"{where}.template: {err}; write {{{{ and }}}} for literal braces") from err
    bad = [name for name in fields if not name.isidentifier()]
    if bad:
        raise ConfigError(f"{where}.template: {{{bad[0]}}} is not a slot name; slots are plain names like {{tone}}")
    return list(dict.fromkeys(fields))


def fill_template(spec: DictConfig, seed: int, where: str) -> tuple[list[str], list[str]]:
    """A seeded sample of distinct slot combinations, each written into the template."""
    if not spec.template:
        raise ConfigError(f"{where}.template is required with {where}.values: e.g. \"Write a {{tone}} review\"")
    slots = template_slots(spec.template, where)
    values = read_values_table(spec.values_file, f"{where}.values_file") if spec.values_file else {}
    values.update({k: [str(v) for v in vs] for k, vs in OmegaConf.to_container(spec["values"]).items()})
    for slot in slots:
        if slot not in values:
            raise ConfigError(f"{where}.template has {{{slot}}} but {where}.values has no {slot}: add "
                              f"{where}.values.{slot}=[...]")
        values[slot] = list(dict.fromkeys(v for v in values[slot] if v.strip()))
        if not values[slot]:
            raise ConfigError(f"{where}.values.{slot}: no values; give at least one")
    sizes = [len(values[slot]) for slot in slots]
    combinations = math.prod(sizes)
    count = combinations if spec.count is None else spec.count
    if count < 1:
        raise ConfigError(f"{where}.count={count}: must be at least 1 (null: every combination)")
    notes = [f"count={count} but only {combinations} distinct combinations: {combinations} prompts"] \
        if count > combinations else []
    prompts = []
    # Sampled as numbers in mixed radix: the combinations are never listed, however many there are.
    for number in sorted(random.Random(f"{seed}/templates").sample(range(combinations), min(count, combinations))):
        filled = {}
        for slot, size in zip(reversed(slots), reversed(sizes)):
            number, digit = divmod(number, size)
            filled[slot] = values[slot][digit]
        prompts.append(spec.template.format(**filled))
    return prompts, notes


def query_prompts(spec: DictConfig, seed: int, where: str) -> tuple[list, list[str]]:
    """The query's rows, a seeded random sample of `count` of them, the prompt column of each."""
    if not spec.url or not spec.query:
        raise ConfigError(f"{where}.url and {where}.query are both required, e.g. {where}.url=prompts.db "
                          f"{where}.query='SELECT text FROM prompts'")
    con = connect(str(spec.url), where)
    # A throwaway cache: datasets keys its cache by the query and connection, not by the database's content, so
    # a shared cache would serve yesterday's rows after the table changed.
    with tempfile.TemporaryDirectory() as cache:
        try:
            rows = datasets.Dataset.from_sql(spec.query, con, cache_dir=cache, keep_in_memory=True)
        except Exception as err:  # bad SQL, a missing table, an unreachable server, a missing driver
            if "corresponds to no data" in str(err):  # datasets 5 refuses to build a dataset of no rows
                raise ConfigError(f"{where}.query returned no rows from {spec.url}; check the query or the "
                                  "table") from err
            raise ConfigError(f"{where}.query could not run on {where}.url={spec.url} ({describe(err)})") from err
        finally:
            if isinstance(con, sqlite3.Connection):
                con.close()
    if len(rows) == 0:
        raise ConfigError(f"{where}.query returned no rows from {spec.url}; check the query or the table")
    column = spec.column
    if column is None and len(rows.column_names) != 1:
        raise ConfigError(f"{where}.column: the query returns {', '.join(rows.column_names)}; name the prompt column")
    column = column if column is not None else rows.column_names[0]
    if column not in rows.column_names:
        raise ConfigError(f"{where}.column={column}: not in the query's result (its columns: "
                          f"{', '.join(rows.column_names)})")
    count = len(rows) if spec.count is None else spec.count
    if count < 1:
        raise ConfigError(f"{where}.count={count}: must be at least 1 (null: every row)")
    notes = [f"count={count} but the query returned {len(rows)} rows"] if count > len(rows) else []
    chosen = sorted(random.Random(f"{seed}/sql").sample(range(len(rows)), min(count, len(rows))))
    prompts, blank = [], 0
    for index, value in zip(chosen, rows.select(chosen)[column]):
        prompt = as_prompt(value, f"{where}.query row {index + 1}")
        if prompt is None:
            blank += 1
        else:
            prompts.append(prompt)
    if blank:
        notes.append(f"{blank} blank rows skipped")
    if not prompts:
        raise ConfigError(f"{where}.column={column}: every sampled row is blank; check the query")
    return prompts, notes


def connect(url: str, where: str):
    """A read-only sqlite3 connection for a SQLite file (a plain path or sqlite:///path): a missing file is an
    error, never a new empty database. Any other URL goes to SQLAlchemy as it is."""
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None if "://" in url else url
    if path is None:
        return url
    if not Path(path).expanduser().is_file():
        raise ConfigError(f"{where}.url={url}: no such SQLite file")
    return sqlite3.connect(f"file:{quote(str(Path(path).expanduser().resolve()))}?mode=ro", uri=True)


def format_report(report: dict) -> list[str]:
    """One console line per source."""
    lines = []
    for source, counts in report.items():
        share = f" (share {counts['share']})" if "share" in counts else ""
        notes = "".join(f"; {note}" for note in counts["notes"])
        lines.append(f"prompts: {source}: {counts['taken']} taken{share} of {counts['available']} available, "
                     f"{counts['duplicates']} duplicates{notes}")
    return lines
