"""data=custom: the layouts a user's own file can have, read through data.columns.

  explicit pairs     prompt + chosen + rejected columns (the default names);
  implicit prompt    chosen + rejected only, each a whole conversation (TRL's implicit-prompt format: a list of
                     messages, or Anthropic HH text "\\n\\nHuman: ...\\n\\nAssistant: ..."): the shared start is
                     the prompt. Chosen when the file has no `prompt` column and data.columns.prompt is the
                     default, or data.columns.prompt=null;
  scored responses   data.columns.responses + data.columns.scores, ranked into pairs by data.ranking;
  preferred label    data.columns.responses (two or more) + data.columns.preferred, a column that names the
                     preferred response by index, letter (a/b) or column name; a label naming none (tie,
                     both, empty) never pairs.

resolve() looks at the file once before conversion (missing columns, the layout, the base of index labels);
the converter then works row by row with what it settled.
"""

from __future__ import annotations

import string
from typing import Any, Optional

from trl.data_utils import extract_prompt

from train.core.errors import ConfigError
from train.data.chat import convert_hh_rlhf
from train.data.converters import ranked, response_text
from train.data.rows import Dropped, as_text, converter, get, messages
from train.data.validation import DropReason

# Labels that say no response is preferred: counted as ties (filtered, like equal scores), never guessed.
TIE_LABELS = ("tie", "both", "neither", "none", "equal", "same", "draw")
IMPLICIT = ("implicit prompt: no prompt column, so the shared start of chosen and rejected is the prompt "
            "(trl.data_utils.extract_prompt, moved back to a word boundary; hh-style text is cut at its last "
            "Assistant: turn)")


def names(spec: Any) -> list[str]:
    """The column names a data.columns entry holds: one name, or a list of them."""
    return [] if spec is None else [str(s) for s in spec] if isinstance(spec, (list, tuple)) else [str(spec)]


def used_columns(columns: dict) -> dict[str, list[str]]:
    """data.columns key -> the file columns it reads, for the layout configured."""
    if columns.get("responses"):
        keys = ("prompt", "responses", "preferred" if columns.get("preferred") else "scores")
    else:
        keys = ("prompt", "chosen", "rejected")
    return {key: names(columns.get(key)) for key in keys}


def implicit_prompt(columns: dict, available: list[str]) -> bool:
    """A file of whole conversations (TRL's implicit-prompt format): chosen and rejected, no prompt column."""
    if columns.get("responses") or not (columns.get("chosen") and columns.get("rejected")):
        return False
    if columns.get("prompt") is None:
        return True
    return columns["prompt"] == "prompt" and "prompt" not in available and all(
        columns[k].split(".")[0] in available for k in ("chosen", "rejected"))


def check_missing(columns: dict, available: list[str], source) -> None:
    """Every configured column the file lacks, in one error (one attempt per column is a slow way to learn them)."""
    missing = [(key, name) for key, cols in used_columns(columns).items() for name in cols
               if name.split(".")[0] not in available]
    if not missing:
        return
    settings = ", ".join(dict.fromkeys(f"data.columns.{key}=<column>" for key, _ in missing))
    hint = "" if columns.get("responses") else ("; or for two responses and a label: "
                                                 "data.columns.responses=[<column>,<column>] data.columns.preferred=<column>")
    raise ConfigError(f"data=custom: {source} has no column(s) {', '.join(n for _, n in missing)} (its columns: "
                      f"{', '.join(available)}); set {settings}{hint}")


def index_of(value: Any) -> Optional[int]:
    """An index label (1, 1.0, "1") as an int; None for anything else (letters, names, booleans)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def detect_base(labels: list[tuple[Any, int]], columns: dict) -> Optional[int]:
    """0 or 1 for index labels, from all (label, number of responses) of the column: a 0 means 0-based, a label
    equal to the number of responses means 1-based. Only values in between (a column of 1s) could be either."""
    indices = [(index_of(v), n) for v, n in labels if index_of(v) is not None]
    if not indices:
        return None  # letters or names only: no base needed
    zero, top = any(i == 0 for i, _ in indices), any(i == n for i, n in indices)
    column = columns["preferred"]
    if zero and top:
        raise ConfigError(f"data.columns.preferred={column}: its index labels include both 0 and the number of "
                          "responses; set data.columns.preferred_base=0 or 1")
    if not (zero or top):
        seen = ", ".join(str(i) for i in sorted({i for i, _ in indices}))
        raise ConfigError(f"data.columns.preferred={column}: its index labels ({seen}) fit 0-based and 1-based "
                          "counting; set data.columns.preferred_base=0 (first response is 0) or 1 (first is 1)")
    return 0 if zero else 1


def label_values(dataset, columns: dict) -> list[tuple[Any, int]]:
    """(label, number of responses) of every row that has a label."""
    top = {c.split(".")[0] for c in names(columns["preferred"]) + names(columns["responses"])}
    out = []
    for row in dataset.select_columns(sorted(top)):
        try:
            label = get(row, columns["preferred"])
            count = len(responses_of(row, columns["responses"]))
        except (Dropped, TypeError):
            continue
        out.append((label, count))
    return out


def resolve(columns: dict, datasets: list, source) -> tuple[dict, Optional[str]]:
    """-> (data.columns as the converter reads them, one line on the layout for the report, or None).
    `datasets` are the splits to convert, training split first."""
    available = datasets[0].column_names
    columns = dict(columns)
    if implicit_prompt(columns, available):
        columns["prompt"] = None
        check_missing(columns, available, source)
        return columns, IMPLICIT
    check_missing(columns, available, source)
    if not columns.get("preferred"):
        return columns, None
    if columns.get("preferred_base") is None:
        columns["preferred_base"] = detect_base([v for ds in datasets for v in label_values(ds, columns)], columns)
    how = "" if columns["preferred_base"] is None else f", index labels {columns['preferred_base']}-based"
    listed = names(columns["responses"])
    return columns, (f"preferred label: {columns['preferred']} picks one of {', '.join(listed)}{how}; "
                     f"other labels (tie, both) never pair")


def responses_of(row: dict, spec: Any) -> list:
    """A list column's value, or one value per listed column."""
    if isinstance(spec, (list, tuple)):
        return [get(row, c) for c in spec]
    value = get(row, spec)
    if not isinstance(value, list):
        raise Dropped("malformed", f"{spec}: expected a list of responses")
    return value


def ranking_values(row: dict, spec: Any):
    """Responses or scores to rank: a list column as it is (ranked() checks it), or one value per listed
    column with None where one is absent (ranked() leaves that answer out and counts it)."""
    if not isinstance(spec, (list, tuple)):
        return get(row, spec)
    out = []
    for path in spec:
        try:
            out.append(get(row, path))
        except Dropped:
            out.append(None)
    return out


def preferred_index(label: Any, listed: list[str], count: int, base: Optional[int], field: str):
    """The preferred response's index, or the DropReason of a label that names none of them."""
    index = index_of(label)
    if index is not None:
        if base is None:  # resolve() sets it; a converter called on its own must be told
            raise Dropped("malformed", f"{field}={label!r}: index label with no data.columns.preferred_base")
        index -= base
    elif isinstance(label, str):
        word = label.strip().lower()
        letters = string.ascii_lowercase[:count]
        full = [c.lower() for c in listed]
        last = [c.split(".")[-1].lower() for c in listed]
        if len(word) == 1 and word in letters:
            index = letters.index(word)
        elif word in full or word in last:
            index = (full if word in full else last).index(word)
        elif word.startswith(TIE_LABELS):
            return DropReason("tie", f"{field}={label!r}")
        elif not word:
            return DropReason("missing_field", field)
    if index is None or not 0 <= index < count:
        return DropReason("malformed", f"{field}={label!r} names none of the {count} responses")
    return index


def word_boundary(split: dict) -> dict:
    """TRL's cut of two texts falls where they first differ, which can be inside a word both answers start with
    ("... four" / "... five": the prompt would end in "f"); move it back to the last whitespace of the prompt."""
    prompt = split["prompt"]
    if not prompt or prompt[-1].isspace() or all(split[k][:1].isspace() for k in ("chosen", "rejected")):
        return split
    cut = max(prompt.rfind(" "), prompt.rfind("\n"), prompt.rfind("\t"))
    cut = cut if cut >= 0 else 0
    return {"prompt": prompt[:cut], **{k: prompt[cut:] + split[k] for k in ("chosen", "rejected")}}


def implicit_pair(chosen: Any, rejected: Any, fields: tuple[str, str]):
    """One pair from two whole conversations sharing their start (TRL's implicit-prompt format)."""
    if isinstance(chosen, str) and isinstance(rejected, str):
        if all(t.lstrip().startswith("Human:") and "Assistant:" in t for t in (chosen, rejected)):
            return convert_hh_rlhf({"chosen": chosen, "rejected": rejected}, {})
        split = word_boundary(extract_prompt({"chosen": chosen, "rejected": rejected}))
        prompt = as_text(split["prompt"], "prompt (the shared start of chosen and rejected)")
        return [{"prompt": prompt, "chosen": as_text(split["chosen"], fields[0]),
                 "rejected": as_text(split["rejected"], fields[1])}]
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise Dropped("malformed", f"{fields[0]}/{fields[1]}: expected two texts or two lists of messages")
    split = extract_prompt({"chosen": messages(chosen, fields[0]), "rejected": messages(rejected, fields[1])})
    if not split["prompt"] or split["prompt"][-1]["role"] != "user":
        raise Dropped("malformed", "the shared start of chosen and rejected does not end with a user message")
    if len(split["chosen"]) != 1 or len(split["rejected"]) != 1:
        raise Dropped("malformed", "chosen and rejected differ before their last message")
    return [{"prompt": split["prompt"], "chosen": response_text(split["chosen"], fields[0]),
             "rejected": response_text(split["rejected"], fields[1])}]


@converter
def convert_custom(row: dict, opts: dict):
    """Any table, laid out as data.columns says (see the module docstring). Dotted names reach into nested
    fields; a prompt may be chat messages, a response an [assistant message]."""
    columns = opts["columns"]
    if columns["prompt"] is None:
        fields = (columns["chosen"], columns["rejected"])
        return implicit_pair(get(row, fields[0]), get(row, fields[1]), fields)
    prompt = get(row, columns["prompt"])
    prompt = messages(prompt, columns["prompt"]) if isinstance(prompt, list) else as_text(prompt, columns["prompt"])
    spec = columns["responses"]
    field = ",".join(names(spec))
    if columns.get("preferred"):
        responses = responses_of(row, spec)
        listed = names(spec) if isinstance(spec, (list, tuple)) else []  # a list column's entries have no names
        index = preferred_index(get(row, columns["preferred"]), listed, len(responses), columns.get("preferred_base"),
                                columns["preferred"])
        if isinstance(index, DropReason):
            return index
        chosen = response_text(responses[index], f"{field}[{index}]")
        return [{"prompt": prompt, "chosen": chosen, "rejected": response_text(other, f"{field}[{i}]")}
                for i, other in enumerate(responses) if i != index]
    if spec:
        return ranked(prompt, ranking_values(row, spec), ranking_values(row, columns["scores"]), opts, field)
    chosen = response_text(get(row, columns["chosen"]), columns["chosen"])
    rejected = response_text(get(row, columns["rejected"]), columns["rejected"])
    return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]
