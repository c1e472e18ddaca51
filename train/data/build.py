"""Native rows -> validated splits in TRL's format, plus the validation report.

Order: convert each row (pure converters) -> text checks -> hold out a test slice if the source has no
test split -> drop duplicates -> present as chat messages or strings -> token checks with the run's
tokenizer and max_length. SFT rows come from the source's own SFT split when it has one, else from the
chosen responses of the training pairs, so SFT stays in-distribution with the preference data.
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable, Iterable, Optional

from train.config.schema import MainConfig

from train.core.errors import ConfigError
from train.data import custom
from train.data.rows import present, prompt_key
from train.data.sources import Source
from train.data.validation import DropReason, Tally, check_pair, check_text, drop_fraction, length_outcomes, token_ids

TOKENIZE_BATCH = 512  # rows per tokenizer call: batched calls are much faster than one row at a time


def convert_rows(rows: Iterable[dict], convert: Callable, opts: dict, tally: Tally, where: str) -> list[dict]:
    """Every native row through its converter; pairs (or SFT rows) come out, the rest is counted."""
    out = []
    for index, row in enumerate(rows):
        result = convert(row, opts)
        for item in [result] if isinstance(result, DropReason) else result:
            if isinstance(item, DropReason):
                tally.add(item, f"{where}#{index}")
                continue
            problem = check_pair(item) if "chosen" in item else check_sft(item)
            if problem:
                tally.add(problem, f"{where}#{index}")
            else:
                out.append({**item, "_where": f"{where}#{index}"})
    return out


def check_sft(row: dict) -> Optional[DropReason]:
    prompt = row["prompt"]
    return (None if isinstance(prompt, list) else check_text(prompt, "prompt")) or check_text(row["completion"], "completion")


def hold_out(pairs: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded test slice of whole prompts (all pairs of a prompt on one side, so none leaks), at
    least one prompt when there are two or more. Order within each side is kept."""
    prompts = sorted({prompt_key(p["prompt"]) for p in pairs},
                     key=lambda k: hashlib.sha256(f"{seed}\x00{k}".encode()).hexdigest())
    n_test = min(len(prompts) - 1, max(1, math.ceil(fraction * len(prompts)))) if len(prompts) > 1 else 0
    held = set(prompts[:n_test])
    return [p for p in pairs if prompt_key(p["prompt"]) not in held], [p for p in pairs if prompt_key(p["prompt"]) in held]


def deduplicate(rows: list[dict], seen: set, tally: Tally, fields: tuple[str, ...]) -> list[dict]:
    out = []
    for row in rows:
        key = "\x1d".join(prompt_key(row[f]) if f == "prompt" else row[f].strip() for f in fields)
        if key in seen:
            tally.add(DropReason("duplicate_pair"), row["_where"])
        else:
            seen.add(key)
            out.append(row)
    return out


def token_check(rows: list[dict], tally: Tally, tokenizer, conversational: bool, max_length, mode: str) -> list[bool]:
    """Which presented rows survive max_length as TRL will apply it; drops and fixes are counted."""
    if tokenizer is None or max_length is None or not rows:
        return [True] * len(rows)
    responses = [k for k in ("chosen", "rejected", "completion") if k in rows[0]]
    keep = []
    for start in range(0, len(rows), TOKENIZE_BATCH):
        batch = rows[start:start + TOKENIZE_BATCH]
        prompt_ids, full = token_ids(tokenizer, [r["prompt"] for r in batch], [[r[k] for r in batch] for k in responses],
                                     conversational, tokenizer.eos_token)
        for i, row in enumerate(batch):
            outcomes = length_outcomes(prompt_ids[i], [ids[i] for ids in full], max_length, mode)
            for outcome in outcomes:
                tally.add(outcome, row["_where"])
            keep.append(not any(o.kind == "dropped" for o in outcomes))
    return keep


def longest_token_chars(tokenizer) -> int:
    """An upper bound on the characters one token covers: the longest vocabulary entry (byte-level and
    sentencepiece vocabularies spell each byte or space as one character, so a token decodes to at most that)."""
    return max(len(token) for token in tokenizer.get_vocab())


def cut_long_texts(rows: list[dict], tally: Tally, tokenizer, max_length, mode: str) -> list[dict]:
    """Texts longer than max_length tokens could span, cut before tokenizing (a 20 MB response took 163 s
    and 4.6 GB to tokenize). The cut keeps more characters than max_length tokens can cover, so the tokens
    TRL keeps after its own truncation are unchanged; the token check then counts the row as fixed
    (response_truncated). A prompt that long cannot leave room for a response: dropped as prompt_too_long."""
    if tokenizer is None or max_length is None or not rows:
        return rows
    limit = (max_length + 1) * longest_token_chars(tokenizer)
    out = []
    for row in rows:
        prompt = row["prompt"]
        chars = len(prompt) if isinstance(prompt, str) else sum(len(m["content"]) for m in prompt)
        if chars > limit and mode == "keep_start":
            tally.add(DropReason("prompt_too_long", f"{chars} characters"), row["_where"])
            continue
        cut = {k: (v[:limit] if mode == "keep_start" else v[-limit:]) for k, v in row.items()
               if k in ("chosen", "rejected", "completion") and len(v) > limit}
        out.append({**row, **cut})
    return out


def finish(rows: list[dict], tally: Tally, tokenizer, conversational: bool, max_length, mode: str):
    """-> (kept canonical rows, the same rows presented for TRL)."""
    rows = cut_long_texts(rows, tally, tokenizer, max_length, mode)
    presented = [{**present(r, conversational), "_where": r["_where"]} for r in rows]
    keep = token_check(presented, tally, tokenizer, conversational, max_length, mode)
    kept = [r for r, k in zip(rows, keep) if k]
    return kept, [{f: v for f, v in r.items() if f != "_where"} for r, k in zip(presented, keep) if k]


def count_unreadable(unreadable: dict[str, list[str]], split: str, tally: Tally) -> int:
    """Lines of the source that did not parse (loading.py skipped them) are malformed rows of their split."""
    for where in unreadable.get(split, []):
        tally.add(DropReason("malformed", "unparsable line"), f"{split} {where}")
    return len(unreadable.get(split, []))


def build(cfg: MainConfig, source: Source, opts: dict, splits: dict, tokenizer, lengths: dict,
          unreadable: Optional[dict[str, list[str]]] = None) -> tuple[dict, dict]:
    """-> ({sft, train_pairs, test_pairs, eval_prompts: rows}, report). `unreadable`: split -> where lines of the
    source could not be parsed (counted as malformed)."""
    data, conversational, unreadable = cfg.data, cfg.data.conversational, unreadable or {}
    if data.train_split not in splits:
        raise ConfigError(f"data.train_split={data.train_split}: the source has splits {', '.join(sorted(splits))}")
    has_test = bool(data.test_split and data.test_split in splits and data.test_split != data.train_split)
    layout = None
    if source.uses_columns:
        used = [splits[data.train_split]] + ([splits[data.test_split]] if has_test else [])
        columns, layout = custom.resolve(opts["columns"], used, data.source)
        opts = {**opts, "columns": columns}
    tally = Tally()
    bad_rows = {split: count_unreadable(unreadable, split, tally) for split in (data.train_split, data.test_split) if split}
    train = convert_rows(splits[data.train_split], source.convert, opts, tally, data.train_split)
    if has_test:
        test, test_desc = convert_rows(splits[data.test_split], source.convert, opts, tally, data.test_split), data.test_split
    else:
        train, test = hold_out(train, data.test_fraction, cfg.seed)
        test_desc = f"held out {data.test_fraction:g} of prompts, seed {cfg.seed}"
        if data.test_split and data.test_split != data.train_split:
            test_desc += f"; no {data.test_split} split in the source"
    seen: set = set()
    train = deduplicate(train, seen, tally, ("prompt", "chosen", "rejected"))
    test = deduplicate(test, seen, tally, ("prompt", "chosen", "rejected"))  # a copy of a train pair is no test
    dpo_len, mode = lengths["dpo_max_length"], lengths["truncation_mode"]
    train, train_rows = finish(train, tally, tokenizer, conversational, dpo_len, mode)
    test, test_rows = finish(test, tally, tokenizer, conversational, dpo_len, mode)

    sft_tally = Tally()
    if data.sft_split and data.sft_split in splits:
        sft_desc = data.sft_split
        sft = convert_rows(splits[data.sft_split], source.convert_sft, opts, sft_tally, data.sft_split)
    else:
        sft_desc = "chosen responses of the train pairs" + (f" ({data.sft_split} not in the source)" if data.sft_split else "")
        sft = [{"prompt": p["prompt"], "completion": p["chosen"], "_where": p["_where"]} for p in train]
    sft = deduplicate(sft, set(), sft_tally, ("prompt", "completion"))
    _, sft_rows = finish(sft, sft_tally, tokenizer, conversational, lengths["sft_max_length"], "keep_start")

    if data.eval_split and data.eval_split in splits:
        eval_prompts = [present({"prompt": r["prompt"]}, conversational) for r in splits[data.eval_split]]
    else:
        unique = {prompt_key(p["prompt"]): row["prompt"] for p, row in zip(test, test_rows)}
        eval_prompts = [{"prompt": p} for p in unique.values()]
    report = {
        "name": data.name,
        "source": f"{data.name} ({data.source})" if data.source else data.name,
        "rows": {"train": len(splits[data.train_split]) + bad_rows[data.train_split],
                 "test": len(splits[data.test_split]) + bad_rows[data.test_split] if has_test else 0},
        "layout": layout,
        "pairs": {"train": len(train), "test": len(test)},
        "test_split": test_desc,
        "eval_prompts": len(eval_prompts),
        **tally.as_dict(),
        "sft": {"source": sft_desc, "rows": len(sft_rows), "dropped": sft_tally.as_dict()["dropped"]},
        "max_length": dpo_len if tokenizer is not None else None,
        "max_drop_fraction": data.max_drop_fraction,
    }
    report["drop_fraction"] = drop_fraction(report)
    return {"sft": sft_rows, "train_pairs": train_rows, "test_pairs": test_rows, "eval_prompts": eval_prompts}, report
