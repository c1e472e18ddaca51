"""Typed schema of our own settings (Hydra structured configs), registered as `main_schema`.

One source for every default value:
  - groups with several options (model, data, judge, beta, deepspeed): the defaults are here, and an option's YAML
    sets only what it changes, so a new option (your own conf/model/mine.yaml) inherits them;
  - groups with one option (sft, dpo, eval, wandb) and the top-level keys: the values are in the YAML
    (conf/<group>/default.yaml, conf/config.yaml), next to a comment saying why; here they are `???`.
tests/test_defaults.py checks that no value is written in both places.

Trainer settings (`sft.args`, `dpo.args`) are deliberately untyped dicts: they pass through to TRL's
SFTConfig / DPOConfig, which checks them (train/config/trainer_args.py). DPOConfig itself cannot be the
schema because OmegaConf rejects its Union-typed fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from train.config.choices import (Batching, BetaSchedule, JudgeKind, KeepAtEnd, LabelerKind, RankingStrategy,
                                  Reference, Stage, WandbMode)
from train.config.onpolicy_schema import GenerateConfig
from train.config.reward_schema import RewardStageConfig



@dataclass
class TinyModelSpec:
    """Architecture of the embedded tiny Llama, built from a config (train/models/tiny.py); values in conf/model/tiny.yaml."""

    vocab_size: int = MISSING  # upper bound for the BPE tokenizer fitted on the synthetic corpus
    hidden_size: int = MISSING  # model width
    intermediate_size: int = MISSING  # MLP width
    num_hidden_layers: int = MISSING  # decoder layers
    num_attention_heads: int = MISSING  # attention heads (as many key/value heads)
    max_position_embeddings: int = MISSING  # longest sequence


@dataclass
class ArchitectureSpec:
    """What the memory plan (train/memory/estimate.py) needs of a model, known without its weights; each
    conf/model/*.yaml sets it, checked against the model's config.json whenever that is on disk."""

    model_type: str = MISSING  # transformers model_type (llama, qwen2, mistral): builds the config to trace
    num_hidden_layers: int = MISSING  # decoder layers
    hidden_size: int = MISSING  # model width
    intermediate_size: int = MISSING  # MLP width
    num_attention_heads: int = MISSING  # query heads
    num_key_value_heads: int = MISSING  # key/value heads (GQA: fewer than the query heads)
    vocab_size: int = MISSING  # embedding rows (the LM head's width)
    tie_word_embeddings: bool = False  # the LM head shares the embedding matrix (one copy of V x hidden)
    num_parameters: Optional[int] = None  # published count, checked against the architecture; null: counted


@dataclass
class ModelConfig:
    name_or_path: str = MISSING  # hub id or local directory; for `tiny`, where the built model is saved
    dtype: str = "float32"  # torch dtype to load weights in: float32, bfloat16, float16 or auto
    attn_implementation: str = "sdpa"  # eager, sdpa or flash_attention_2
    trust_remote_code: bool = False  # run code shipped with the model: only for models you trust
    chat_template: Optional[str] = None  # a Jinja chat template replacing the tokenizer's; null keeps its own
    revision: Optional[str] = None  # hub revision (branch, tag or commit) to pin
    tiny: Optional[TinyModelSpec] = None  # set only for the embedded model: build it from this spec
    arch: Optional[ArchitectureSpec] = None  # architecture numbers for `python -m train.plan` (no weights needed)


@dataclass
class SyntheticSpec:
    """Sizes of the generated sentiment task (train/data/synthetic.py); values in conf/data/synthetic.yaml."""

    num_sft: int = MISSING  # prompt-completion rows for SFT
    num_pairs: int = MISSING  # preference pairs for DPO training
    num_test_pairs: int = MISSING  # held-out pairs for DPO evaluation loss/rewards
    num_eval_prompts: int = MISSING  # held-out prompts sampled from policy and reference after DPO


@dataclass
class RankingSpec:
    """Scored responses -> pairs (train/data/ranking.py), for sources with several answers per prompt."""

    strategy: RankingStrategy = RankingStrategy.best_vs_worst  # best_vs_worst, best_vs_rest, all_pairs or adjacent
    min_margin: float = 0.0  # smallest score difference that makes a pair (ties never do)


@dataclass
class ColumnsSpec:
    """Where data=custom finds its fields (dotted names reach into nested fields)."""

    prompt: Optional[str] = "prompt"  # text or chat messages; null (or no such column): shared start of chosen/rejected
    chosen: Optional[str] = "chosen"  # preferred response (text, or [assistant message])
    rejected: Optional[str] = "rejected"  # dispreferred response
    responses: Any = None  # a list column or list of columns (Any: str or list), with scores or preferred
    scores: Any = None  # numbers, one per response (higher is better): a list column, or a list of columns
    preferred: Optional[str] = None  # which response is preferred: an index, a letter (a/b) or a column's name
    preferred_base: Optional[int] = None  # index labels: 0 or 1; null: from the values ({0,1}: 0, {1,2}: 1)


@dataclass
class DataConfig:
    name: str = MISSING  # which converter reads the source (one per data/*.yaml)
    source: Optional[str] = None  # hub id, local file or directory, or hf:// file URL; null for generated data
    subset: Optional[str] = None  # hub dataset config name (load_dataset's `name`), e.g. comparisons
    data_dir: Optional[str] = None  # directory inside the hub repository, e.g. helpful-base
    revision: Optional[str] = None  # hub revision (branch, tag or commit) to pin
    train_split: str = "train"  # split the training pairs come from
    test_split: Optional[str] = "test"  # held-out pairs; when the source lacks it, a seeded slice of train
    test_fraction: float = 0.05  # share of training prompts held out when there is no test split
    sft_split: Optional[str] = None  # a real SFT split; null (or absent): SFT on the chosen responses
    eval_split: Optional[str] = None  # prompts sampled after DPO; null: the test pairs' prompts
    max_rows: Optional[int] = None  # read at most this many rows per split (quick looks at big sources)
    max_drop_fraction: float = 0.05  # stop when more than this share of pairs is dropped as bad data
    conversational: bool = True  # present rows as chat messages so the model's chat template applies
    options: dict[str, Any] = field(default_factory=dict)  # source-specific settings (see conf/data/<name>.yaml)
    ranking: RankingSpec = field(default_factory=RankingSpec)  # ranked sources only (eli5, custom responses/scores)
    columns: ColumnsSpec = field(default_factory=ColumnsSpec)  # data=custom only
    synthetic: Optional[SyntheticSpec] = None  # generation sizes, for name=synthetic


@dataclass
class JudgeConfig:
    """What scores samples after DPO (train/models/judges.py); the data group picks the default (conf/judge/)."""

    kind: JudgeKind = MISSING  # none, reward_model, or a rule of train/data JUDGES (sentiment); one per judge/*.yaml
    name_or_path: Optional[str] = None  # reward_model: an AutoModelForSequenceClassification directory or hub id
    revision: Optional[str] = None  # reward_model: hub revision (branch, tag or commit) to pin
    dtype: str = "float32"  # reward_model: torch dtype to load it in: float32, bfloat16, float16 or auto
    batch_size: int = 16  # reward_model: prompt+response sequences per forward pass
    max_length: int = 1024  # reward_model: tokens scored per sequence; longer ones lose the start of the prompt
    chat_template: Optional[str] = None  # reward_model: replaces its tokenizer's template (chatml, a file or Jinja)
    trust_remote_code: bool = False  # reward_model: run code shipped with it: only for models you trust


@dataclass
class LabelerConfig(JudgeConfig):
    """What labels on-policy answers (train/models/labelers.py): a judge's fields, a closed kind (conf/labeler/)."""

    kind: LabelerKind = MISSING  # none, reward_model, sentiment; annotations is reserved (refused for now)


@dataclass
class BetaConfig:
    schedule: BetaSchedule = MISSING  # constant, linear, cosine or adaptive (one per beta/*.yaml)
    value: float = 0.1  # DPO temperature; for schedules, the value at step 0; for adaptive, beta0
    final: Optional[float] = None  # schedules only: the value at the last step
    warmup_steps: int = 0  # schedules only: steps held at `value` before the schedule starts
    # adaptive only (beta-DPO, Wu et al. 2024; the paper's values): beta = value * (1 + alpha * (mean kept margin - M0))
    alpha: float = 0.6  # how strongly the batch's margins move beta (paper's README example: 0.6; 0 = constant)
    rho: float = 0.2  # share of each batch's pairs left out of the loss, far from the running mean (paper: 0.2; 0 = off)
    momentum: float = 0.9  # moving-average weight of the margins' running mean M0 and std (paper: 0.9)


@dataclass
class DeepSpeedConfig:
    stage: int = 0  # ZeRO stage, 0 = DeepSpeed off
    config: Optional[dict[str, Any]] = None  # DeepSpeed JSON config handed to the trainers


@dataclass
class StageConfig:
    enabled: bool = MISSING  # false: skip the stage (SFT: DPO starts from the base model)
    args: dict[str, Any] = MISSING  # SFTConfig / DPOConfig keys, checked by TRL


@dataclass
class LoraSpec:
    """LoRA adapters (peft.LoraConfig), as sft.lora and dpo.lora set them; values in conf/{sft,dpo}/default.yaml."""

    r: int = MISSING  # adapter rank
    alpha: int = MISSING  # scaling numerator (scale = alpha / r)
    dropout: float = MISSING  # adapter dropout
    target_modules: list[str] = MISSING  # module names that get adapters


@dataclass
class SFTLoraSpec(LoraSpec):
    """sft.lora: train adapters instead of all weights; the published SFT model is merged (train/models/adapters.py)."""

    enabled: bool = MISSING  # false: full fine-tuning


@dataclass
class DPOLoraSpec(LoraSpec):
    """dpo.lora, for dpo.reference=lora: the reference is the policy with adapters disabled."""

    merge: bool = MISSING  # also write merged full weights: policy/ is a plain model, the adapter in policy/adapter/


@dataclass
class SFTStageConfig(StageConfig):
    lora: SFTLoraSpec = field(default_factory=SFTLoraSpec)  # adapters instead of full fine-tuning


@dataclass
class DPOStageConfig(StageConfig):
    # Where reference log-probs come from: model (a frozen second copy, sharded like the policy under
    # ZeRO-3), precomputed (once before training; no reference in memory while training), lora (train
    # adapters; the reference is the same weights with adapters disabled, no second copy at all).
    reference: Reference = MISSING
    # Layout of a DPO micro-batch (train/trainer/layouts.py): auto, padded, packed or prefix_shared.
    batching: Batching = MISSING
    lora: DPOLoraSpec = field(default_factory=DPOLoraSpec)  # used by reference=lora


@dataclass
class EvalConfig:
    enabled: bool = MISSING  # sample and judge after DPO
    num_prompts: int = MISSING  # held-out prompts to sample
    max_new_tokens: int = MISSING  # sample length limit
    temperature: float = MISSING  # 1.0 samples the model's own distribution, which the KL estimate needs
    batch_size: int = MISSING  # prompts per generate() call


@dataclass
class WandbConfig:
    enabled: bool = MISSING  # log to Weights & Biases (online if reachable with a key, else offline files)
    mode: WandbMode = MISSING  # auto, online, offline or disabled
    project: str = MISSING  # W&B project
    entity: Optional[str] = MISSING  # W&B team or user; null uses the key's default
    group: Optional[str] = MISSING  # runs grouped together, e.g. one sweep; null: the experiment name
    name: Optional[str] = MISSING  # run name; null: from the command-line overrides (e.g. beta.value=0.1)
    tags: list[str] = MISSING  # free-form tags



@dataclass
class CheckpointConfig:
    every_steps: int = MISSING  # optimizer steps between SFT and DPO checkpoints (DPO also saves at the end); 0: none
    keep: int = MISSING  # complete checkpoints kept; older ones are deleted after a newer one is complete
    keep_at_end: KeepAtEnd = MISSING  # what a finished run keeps of them (all, last, none)


@dataclass
class ResumeConfig:
    enabled: bool = MISSING  # start from the newest complete checkpoint in the run directory, if any
    allow_changes: bool = MISSING  # resume even if world size, global batch, seed or data changed


@dataclass
class FaultsConfig:
    max_bad_steps: int = MISSING  # consecutive NaN/inf-loss steps (each skipped) before the run stops
    collective_timeout_s: int = MISSING  # a rank waiting longer than this on the others fails the job


@dataclass
class ReportConfig:
    # The sweep report recommends the best beta whose KL(policy || reference) is at most this; null: no budget.
    kl_budget: Optional[float] = MISSING


@dataclass
class SearchConfig:
    # What an optimizing sweeper (hydra/sweeper=beta_search) maximizes: `auto` or a results.json path
    # (train/sweep/recommend.py OBJECTIVES).
    metric: str = MISSING


@dataclass
class PlanConfig:
    # At launch on GPUs, stop before loading when the memory plan says the config cannot fit (train/plan.py).
    check: bool = MISSING


@dataclass
class MainConfig:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    beta: BetaConfig = MISSING
    deepspeed: DeepSpeedConfig = MISSING
    judge: JudgeConfig = MISSING
    labeler: LabelerConfig = MISSING
    generate: GenerateConfig = MISSING  # on-policy rounds (conf/generate/)
    sft: SFTStageConfig = MISSING
    dpo: DPOStageConfig = MISSING
    eval: EvalConfig = MISSING
    reward: RewardStageConfig = MISSING  # stage=reward only
    wandb: WandbConfig = MISSING
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: ResumeConfig = field(default_factory=ResumeConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    stage: Stage = MISSING  # all, sft, dpo, eval or reward (reward is not part of all)
    seed: int = MISSING  # one seed for data generation, model init and trainers
    dry_run: bool = MISSING  # build everything, print a summary, stop before training
    output_root: str = MISSING  # runs/, sweeps/, sft/ and models/ live under it
    experiment: str = MISSING  # experiment name: W&B group default, a label in results, the sweep directory
    name: Optional[str] = MISSING  # run directory name under output_root/runs; null: made from the overrides
    nproc_per_node: int = MISSING  # processes per node in SLURM jobs
