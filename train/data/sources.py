"""The registry of data sources: data.name -> how its rows become pairs (one conf/data/<name>.yaml each).

Source-specific knobs live in data.options; their defaults are here, next to the converter that reads
them, and a key the converter does not know is refused (a typo would otherwise be ignored).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Callable


from train.config.schema import ColumnsSpec, DataConfig, RankingSpec
from train.core.errors import ConfigError
from train.data import chat, converters, custom
from train.data.ranking import STRATEGIES


@dataclass(frozen=True)
class Source:
    convert: Callable  # native row -> canonical pairs | DropReason (pure)
    options: dict[str, Any] = field(default_factory=dict)  # data.options defaults
    choices: dict[str, tuple] = field(default_factory=dict)  # allowed values of an option
    convert_sft: Callable = converters.convert_prompt_completion  # rows of data.sft_split, when set
    ranked: bool = False  # reads data.ranking
    uses_columns: bool = False  # reads data.columns


SOURCES: dict[str, Source] = {
    "webgpt_comparisons": Source(converters.convert_webgpt, {"strip_citations": True}),
    "summarize_from_feedback": Source(converters.convert_summarize),
    "eli5": Source(converters.convert_eli5, ranked=True),
    "hc3": Source(converters.convert_hc3, {"prefer": "human"}, {"prefer": ("human", "chatgpt")}),
    "hh_rlhf": Source(chat.convert_hh_rlhf),
    "ultrafeedback_binarized": Source(chat.convert_ultrafeedback, convert_sft=chat.convert_ultrafeedback_sft),
    "shp": Source(converters.convert_shp, {"min_score_ratio": None}),
    "custom": Source(custom.convert_custom, ranked=True, uses_columns=True),
    # The embedded task's generated rows are already {prompt, chosen, rejected}.
    "synthetic": Source(custom.convert_custom, uses_columns=True),
}
# The schema's defaults (one source): a source that does not read data.ranking / data.columns refuses a change.
DEFAULT_COLUMNS = dataclasses.asdict(ColumnsSpec())
RANKING_DEFAULTS = dataclasses.asdict(RankingSpec())
USERS = {"ranking": "eli5 and custom", "columns": "custom"}


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise ConfigError(f"data.name={name}: no converter; choose one of {', '.join(sorted(SOURCES))}")
    return SOURCES[name]


def resolve_options(data: DataConfig) -> dict[str, Any]:
    """data.options over the source's defaults, plus data.ranking and data.columns where the source reads them."""
    source = get_source(data.name)
    given = copy.deepcopy(data.options) if data.options is not None else {}
    for key in given:
        if key not in source.options:
            close = difflib.get_close_matches(key, source.options, n=1)
            known = f"did you mean data.options.{close[0]}?" if close else (
                f"its options: {', '.join(source.options)}" if source.options else "it has none")
            raise ConfigError(f"data.options.{key}: not an option of data={data.name}; {known}")
    opts = {**source.options, **given}
    for key, allowed in source.choices.items():
        if opts[key] not in allowed:
            raise ConfigError(f"data.options.{key}={opts[key]}: choose one of {', '.join(allowed)}")
    for key, defaults, used in (("ranking", RANKING_DEFAULTS, source.ranked), ("columns", DEFAULT_COLUMNS, source.uses_columns)):
        given = {**defaults, **(dataclasses.asdict(getattr(data, key)) if getattr(data, key) is not None else {})}
        if used:
            opts[key] = given
        elif given != defaults:  # silently ignoring a setting would look like it took effect
            raise ConfigError(f"data.{key}: data={data.name} does not read it (used by {USERS[key]}); remove the override")
    if source.ranked and opts["ranking"]["strategy"] not in STRATEGIES:
        raise ConfigError(f"data.ranking.strategy={opts['ranking']['strategy']}: choose one of {', '.join(STRATEGIES)}")
    if source.uses_columns:
        check_columns(opts["columns"])
    return opts


def check_columns(columns: dict[str, Any]) -> dict[str, Any]:
    """The data.columns layouts (train/data/custom.py): chosen/rejected, or responses with scores or preferred."""
    responses, scores, preferred = columns["responses"], columns["scores"], columns["preferred"]
    if responses is not None:
        if isinstance(responses, list) and len(responses) < 2:
            raise ConfigError(f"data.columns.responses={responses}: list two or more columns, or name one list column")
        if not (scores or preferred):
            raise ConfigError("data.columns.responses and data.columns.scores go together: set both, or set "
                              "data.columns.preferred (the column naming the preferred response) instead of scores")
        if scores and preferred:
            raise ConfigError("data.columns.scores and data.columns.preferred: set one (scores rank, a label picks)")
        if columns["prompt"] is None:
            raise ConfigError("data.columns.prompt=null (prompt shared by whole conversations) reads chosen/rejected; "
                              "with data.columns.responses name the prompt column")
    elif scores or preferred:
        which = "scores" if scores else "preferred"
        raise ConfigError(f"data.columns.{which} goes with data.columns.responses: set the response columns, "
                          "e.g. data.columns.responses=[response_a,response_b]")
    elif not (columns["chosen"] and columns["rejected"]):
        raise ConfigError("data.columns: set chosen and rejected, or responses with scores or preferred")
    if columns["preferred_base"] not in (None, 0, 1):
        raise ConfigError(f"data.columns.preferred_base={columns['preferred_base']}: 0 (first response is 0) or 1")
    if columns["preferred_base"] is not None and not preferred:
        raise ConfigError("data.columns.preferred_base: only index labels of data.columns.preferred read it; remove it")
    return columns
