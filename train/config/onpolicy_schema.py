"""Typed settings of the on-policy preference rounds' building blocks: where prompts come from (PromptsSpec,
read by train/data/prompts.py) and what labels the sampled answers (LabelerKind; LabelerConfig in schema.py).

Kept apart from schema.py, which stays under the module size limit; nothing here imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from train.config.choices import GenerateKind, LabelerKind, RoundReference  # noqa: F401 (LabelerKind: schema.py)



@dataclass
class PromptTemplateSpec:
    """Prompts written from a template: each `{slot}` filled from its values, a seeded sample of the distinct
    combinations (`{{` and `}}` write literal braces)."""

    template: Optional[str] = None  # e.g. "Write a {tone} review of {product}"; null: no template prompts
    values: dict[str, list[str]] = field(default_factory=dict)  # slot -> its values, e.g. {tone: [warm, harsh]}
    values_file: Optional[str] = None  # a .csv/.jsonl/.json/.parquet table: each column a slot, its cells the values
    count: Optional[int] = None  # prompts to write (at most the number of combinations); null: every combination


@dataclass
class PromptSqlSpec:
    """Prompts read from a database with a query (datasets.Dataset.from_sql)."""

    url: Optional[str] = None  # a SQLite file path, or any SQLAlchemy URL (needs sqlalchemy and the driver)
    query: Optional[str] = None  # e.g. "SELECT text FROM prompts"
    column: Optional[str] = None  # the result column holding the prompt; null: the query's only column
    count: Optional[int] = None  # a seeded random sample of this many rows; null: every row


@dataclass
class PromptMixSpec:
    """Each source's share of prompts.max_prompts (relative weights; they need not sum to 1). A source left
    null takes no prompts; its prompts are still counted in the report."""

    data: Optional[float] = None
    files: Optional[float] = None
    templates: Optional[float] = None
    sql: Optional[float] = None


@dataclass
class PromptsSpec:
    """Where the prompts of an on-policy round come from (train/data/prompts.py select_prompts)."""

    data: bool = True  # the data group's own prompts
    files: list[str] = field(default_factory=list)  # .jsonl/.json/.csv/.txt/.parquet (optionally .gz) files
    column: str = "prompt"  # the field of a file's rows holding the prompt (text or chat messages)
    templates: PromptTemplateSpec = field(default_factory=PromptTemplateSpec)
    sql: PromptSqlSpec = field(default_factory=PromptSqlSpec)
    mix: PromptMixSpec = field(default_factory=PromptMixSpec)  # needs max_prompts; none set: one pooled sample
    max_prompts: Optional[int] = None  # prompts per round; null: every prompt of every source




@dataclass
class GenerateConfig:
    """On-policy preference rounds (train/pipeline/rounds.py): sample -> label -> pair -> DPO, `rounds` times."""

    kind: GenerateKind = GenerateKind.none  # none: train on the data group's pairs; on_policy: make them
    rounds: int = 1  # round k+1 samples from round k's policy and trains on from it
    num_samples: int = 4  # answers per prompt from each model (at least 2: a pair needs two answers)
    # Where the answers come from: `policy` (the model being tuned: the SFT model in round 1, then the previous
    # round's policy), `sft`, `base`, or a path: a model directory, a checkpoint, or a finished run's directory.
    models: list[str] = field(default_factory=lambda: ["policy"])
    reference: RoundReference = RoundReference.sft  # the DPO reference from round 2 on
    max_new_tokens: int = 48  # answer length limit (tokens)
    temperature: float = 1.0  # sampling temperature (0: greedy, every sample the same: no pairs)
    top_p: float = 1.0  # nucleus sampling; 1.0 keeps the whole distribution
    batch_size: int = 8  # prompts per prefill batch (batch_size x num_samples rows decode together)
    chunk_prompts: int = 64  # prompts per answers file: the unit a stopped generation resumes from
    prompts: PromptsSpec = field(default_factory=PromptsSpec)  # where the prompts come from
