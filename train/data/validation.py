"""Validation report: every row dropped, filtered or fixed on the way to DPO pairs is counted by reason.

Three kinds of outcome, kept apart because they mean different things:
  dropped   bad data (missing field, wrong type, empty, identical, too long, duplicate): counts toward
            data.max_drop_fraction, because silently training on what is left hides a broken source;
  filtered  the source's own selection rules (equal scores, a configured margin or ratio): expected,
            never an error;
  fixed     a row kept after a repair (an empty answer left out of a ranking, a response truncated).
Tokenization-level checks mirror what TRL 1.16's DPOTrainer does with the same tokenizer and max_length:
it silently drops rows whose prompt fills max_length (truncation_mode=keep_start) and never checks
chosen == rejected, so both are counted here instead.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional

DROPPED = {
    "missing_field": "a field the source documents is absent or null",
    "not_a_string": "a text field holds another type",
    "empty": "empty prompt or response",
    "malformed": "not in the source's documented layout",
    "identical": "chosen identical to rejected",
    "prompt_too_long": "prompt fills dpo.args.max_length (TRL would drop it silently)",
    "response_truncated_away": "chosen and rejected agree on every token that fits max_length",
    "duplicate_pair": "same prompt, chosen and rejected seen before",
}
FILTERED = {
    "tie": "equal scores never become pairs",
    "below_margin": "score difference under data.ranking.min_margin",
    "below_score_ratio": "score ratio under data.options.min_score_ratio",
    "single_response": "fewer than two responses to compare",
}
FIXED = {
    "empty": "an empty answer left out of a ranking",
    "not_a_string": "a non-text answer left out of a ranking",
    "missing_field": "an answer without text or score left out of a ranking",
    "malformed": "an answer with a non-numeric score left out of a ranking",
    "response_truncated": "a response cut at max_length (kept: the pair still differs)",
}
MAX_EXAMPLES = 3  # per reason, enough to find the rows without flooding the report
# Roles every chat template renders; another (`wizard`) would be rendered wrongly or make the template fail.
CHAT_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class DropReason:
    """Why a native row (or one candidate pair) produced no pair; `field` says where."""

    reason: str
    field: str = ""

    @property
    def kind(self) -> str:
        return "filtered" if self.reason in FILTERED else "dropped"


@dataclass(frozen=True)
class Fix(DropReason):
    """Part of a row was repaired or left out, and the row still produced pairs."""

    @property
    def kind(self) -> str:
        return "fixed"


class Tally:
    """Counts by kind and reason, with a few example locations per reason."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter] = {"dropped": Counter(), "filtered": Counter(), "fixed": Counter()}
        self.examples: dict[str, list[str]] = {}

    def add(self, outcome: DropReason, where: str) -> None:
        self.counts[outcome.kind][outcome.reason] += 1
        seen = self.examples.setdefault(f"{outcome.kind}/{outcome.reason}", [])
        if len(seen) < MAX_EXAMPLES:
            seen.append(f"{where} {outcome.field}".strip())

    def dropped(self) -> int:
        return sum(self.counts["dropped"].values())

    def as_dict(self) -> dict:
        catalogue = {"dropped": DROPPED, "filtered": FILTERED, "fixed": FIXED}
        # Every reason is listed, zeros included, so the W&B keys are the same for every run.
        out = {kind: {r: self.counts[kind][r] for r in catalogue[kind]} for kind in catalogue}
        out["examples"] = dict(self.examples)
        return out


def check_text(value, field: str) -> Optional[DropReason]:
    if value is None:
        return DropReason("missing_field", field)
    if not isinstance(value, str):
        return DropReason("not_a_string", field)
    if not value.strip():
        return DropReason("empty", field)
    return None


def check_messages(messages, field: str) -> Optional[DropReason]:
    if messages is None:
        return DropReason("missing_field", field)
    if not isinstance(messages, list) or not messages:
        return DropReason("malformed" if messages != [] else "empty", field)
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            return DropReason("malformed", f"{field}[{i}]")
        if message["role"] not in CHAT_ROLES:
            return DropReason("malformed", f"{field}[{i}].role={message['role']!r}")
        problem = check_text(message.get("content"), f"{field}[{i}].content")
        if problem:
            return problem
    return None


def check_pair(pair: dict) -> Optional[DropReason]:
    """Text-level checks on a canonical pair (prompt: str or messages; chosen, rejected: str)."""
    prompt = pair.get("prompt")
    problem = check_messages(prompt, "prompt") if isinstance(prompt, list) else check_text(prompt, "prompt")
    problem = problem or check_text(pair.get("chosen"), "chosen") or check_text(pair.get("rejected"), "rejected")
    if problem:
        return problem
    if pair["chosen"].strip() == pair["rejected"].strip():
        return DropReason("identical", "chosen")
    return None


def token_ids(tokenizer, prompts: list, completions: list[list], conversational: bool, eos: Optional[str]):
    """Token ids of each prompt and of prompt + each completion, tokenized as TRL 1.16 does
    (trl.data_utils._tokenize): messages through the chat template (rendered, then encoded without
    special tokens, which is what apply_chat_template(tokenize=True) does), plain strings through
    tokenizer(text), with EOS appended to plain completions (DPOTrainer's add_eos)."""
    if conversational:
        def encode(convs, **kw):
            texts = tokenizer.apply_chat_template(convs, tokenize=False, **kw)
            return tokenizer(texts, add_special_tokens=False)["input_ids"]

        full = [encode([p + c for p, c in zip(prompts, column)]) for column in completions]
        prompt_of = {}  # prompts repeat (several pairs per prompt): encode each once
        for p in prompts:
            prompt_of.setdefault(repr(p), p)
        ids = dict(zip(prompt_of, encode(list(prompt_of.values()), add_generation_prompt=True)))
        return [ids[repr(p)] for p in prompts], full
    add_eos = (lambda c: c if c.endswith(eos) else c + eos) if eos else (lambda c: c)
    full = [tokenizer(text=[p + add_eos(c) for p, c in zip(prompts, column)])["input_ids"] for column in completions]
    unique = list(dict.fromkeys(prompts))
    ids = dict(zip(unique, tokenizer(text=unique)["input_ids"]))
    return [ids[p] for p in prompts], full


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def length_outcomes(prompt_ids: list[int], full_ids: list[list[int]], max_length: Optional[int],
                    truncation_mode: str) -> list[DropReason]:
    """Drops and fixes that max_length causes for one row (prompt + one or two completions).

    The completion starts where prompt and prompt+completion diverge, as in TRL. With keep_start the
    sequence keeps its first max_length tokens: a prompt that fills them leaves no completion (TRL drops
    the row silently), and two completions that agree on every surviving token carry no preference."""
    if max_length is None:
        return []
    prompt_len = min(common_prefix_length(prompt_ids, ids) for ids in full_ids)
    completions = [ids[prompt_len:] for ids in full_ids]
    if truncation_mode == "keep_start":
        if prompt_len >= max_length:
            return [DropReason("prompt_too_long", f"{prompt_len} prompt tokens >= {max_length}")]
        budget = max_length - prompt_len
        if len(completions) == 2 and completions[0][:budget] == completions[1][:budget]:
            return [DropReason("response_truncated_away", f"first {budget} response tokens agree")]
        cut = sum(len(c) > budget for c in completions)
    else:  # keep_end keeps the end of each sequence: nothing is dropped, the prompt start is cut instead
        cut = sum(prompt_len + len(c) > max_length for c in completions)
    return [Fix("response_truncated", f"> {max_length} tokens")] * min(cut, 1)


def drop_fraction(report: dict) -> float:
    dropped = sum(report["dropped"].values())
    considered = dropped + report["pairs"]["train"] + report["pairs"]["test"]
    return dropped / considered if considered else 0.0


def nonzero(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none"


def format_report(report: dict) -> str:
    """One compact block for the log."""
    pairs, sft = report["pairs"], report["sft"]
    dropped = sum(report["dropped"].values())
    lines = [
        f"data: {report['source']}: {report['rows']['train']}+{report['rows']['test']} rows -> "
        f"{pairs['train']} train pairs, {pairs['test']} test pairs ({report['test_split']}), "
        f"{sft['rows']} sft rows ({sft['source']}), {report['eval_prompts']} eval prompts",
        f"  dropped {dropped} ({report['drop_fraction']:.1%}, limit {report['max_drop_fraction']:.1%}): "
        f"{nonzero(report['dropped'])}",
        f"  filtered by the source's rules: {nonzero(report['filtered'])}; fixed: {nonzero(report['fixed'])}",
    ]
    if report.get("layout"):  # a layout read from the file's columns, not named in the config: say which
        lines.insert(1, f"  layout: {report['layout']}")
    if sum(sft["dropped"].values()):
        lines.append(f"  sft rows dropped: {nonzero(sft['dropped'])}")
    return "\n".join(lines)


def threshold_message(report: dict, need_test: bool = True) -> Optional[str]:
    """The one-line error when too much was dropped (or nothing is left to train on), else None. Training
    needs held-out pairs too; inspecting a source (train.prepare) does not."""
    fraction, limit, pairs = report["drop_fraction"], report["max_drop_fraction"], report["pairs"]
    if fraction <= limit:
        if pairs["train"] and (pairs["test"] or not need_test):
            return None
        return (f"data={report['name']}: {pairs['train']} train and {pairs['test']} test pairs left after "
                f"validation; both are needed (see the counts above; a held-out slice needs two or more prompts)")
    dropped = sum(report["dropped"].values())
    considered = dropped + report["pairs"]["train"] + report["pairs"]["test"]
    return (
        f"data={report['name']}: {dropped} of {considered} pairs dropped ({fraction:.1%} > "
        f"data.max_drop_fraction={limit}): {nonzero(report['dropped'])}; {drop_fix(report)}"
    )


# Reasons that dpo.args.max_length decides, not the data: raising the drop limit would only train on fewer pairs.
LENGTH_REASONS = ("prompt_too_long", "response_truncated_away")


def drop_fix(report: dict) -> str:
    """What to change when too much was dropped: the length limit when that is what dropped most, else the data."""
    dropped = report["dropped"]
    if max(dropped, key=dropped.get) in LENGTH_REASONS and report.get("max_length"):
        return (f"mostly too long for dpo.args.max_length={report['max_length']} tokens (prompt + response): "
                "raise dpo.args.max_length")
    return "fix the source or raise data.max_drop_fraction"

