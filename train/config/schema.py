"""Typed schema of our own settings (Hydra structured configs), registered as `main_schema`.

Trainer settings (`sft.args`, `dpo.args`) are deliberately untyped dicts: they pass through to TRL's
SFTConfig / DPOConfig, which checks them (train/config/trainer_args.py). DPOConfig itself cannot be the
schema because OmegaConf rejects its Union-typed fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

STAGES = ("all", "sft", "dpo", "eval")  # stage=: the whole pipeline or one stage
REFERENCE_PLACEMENTS = ("model", "precomputed", "lora")  # dpo.reference=


@dataclass
class TinyModelSpec:
    """Architecture of the embedded tiny Llama, built from a config (train/tiny.py)."""

    vocab_size: int = 1024  # upper bound for the BPE tokenizer fitted on the synthetic corpus
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    max_position_embeddings: int = 256


@dataclass
class ModelConfig:
    name_or_path: str = MISSING  # hub id or local directory; for `tiny`, where the built model is saved
    dtype: str = "float32"  # torch dtype to load weights in: float32, bfloat16, float16 or auto
    attn_implementation: str = "sdpa"  # eager, sdpa or flash_attention_2
    trust_remote_code: bool = False  # run code shipped with the model: only for models you trust
    chat_template: Optional[str] = None  # a Jinja chat template replacing the tokenizer's; null keeps its own
    revision: Optional[str] = None  # hub revision (branch, tag or commit) to pin
    tiny: Optional[TinyModelSpec] = None  # set only for the embedded model: build it from this spec


@dataclass
class SyntheticSpec:
    """Sizes of the generated sentiment task (train/data/synthetic.py)."""

    num_sft: int = 3000  # prompt-completion rows for SFT
    num_pairs: int = 2000  # preference pairs for DPO training
    num_test_pairs: int = 200  # held-out pairs for DPO evaluation loss/rewards
    num_eval_prompts: int = 64  # held-out prompts sampled from policy and reference after DPO


@dataclass
class RankingSpec:
    """Scored responses -> pairs (train/data/ranking.py), for sources with several answers per prompt."""

    strategy: str = "best_vs_worst"  # best_vs_worst, best_vs_rest, all_pairs or adjacent
    min_margin: float = 0.0  # smallest score difference that makes a pair (ties never do)


@dataclass
class ColumnsSpec:
    """Where data=custom finds its fields (dotted names reach into nested fields)."""

    prompt: str = "prompt"  # text, or chat messages
    chosen: Optional[str] = "chosen"  # preferred response (text, or [assistant message])
    rejected: Optional[str] = "rejected"  # dispreferred response
    responses: Optional[str] = None  # instead of chosen/rejected: a list of responses, ranked by `scores`
    scores: Optional[str] = None  # list of numbers, one per response (higher is better)


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
    judge: Optional[str] = None  # rule-based reward for evaluation (only `sentiment` exists); null: none
    options: dict[str, Any] = field(default_factory=dict)  # source-specific settings (see conf/data/<name>.yaml)
    ranking: RankingSpec = field(default_factory=RankingSpec)  # ranked sources only (eli5, custom responses/scores)
    columns: ColumnsSpec = field(default_factory=ColumnsSpec)  # data=custom only
    synthetic: Optional[SyntheticSpec] = None  # generation sizes, for name=synthetic


@dataclass
class BetaConfig:
    schedule: str = MISSING  # constant, linear or cosine (one per beta/*.yaml)
    value: float = 0.1  # DPO temperature; for schedules, the value at step 0
    final: Optional[float] = None  # schedules only: the value at the last step
    warmup_steps: int = 0  # schedules only: steps held at `value` before the schedule starts


@dataclass
class DeepSpeedConfig:
    stage: int = 0  # ZeRO stage, 0 = DeepSpeed off
    config: Optional[dict[str, Any]] = None  # DeepSpeed JSON config handed to the trainers


@dataclass
class StageConfig:
    enabled: bool = True  # false: skip the stage (SFT: DPO starts from the base model)
    args: dict[str, Any] = field(default_factory=dict)  # SFTConfig / DPOConfig keys, checked by TRL


@dataclass
class LoraSpec:
    """LoRA adapters for dpo.reference=lora: the reference is the base model with adapters disabled."""

    r: int = 16  # adapter rank
    alpha: int = 32  # scaling numerator (scale = alpha / r)
    dropout: float = 0.0  # adapter dropout
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclass
class DPOStageConfig(StageConfig):
    # Where reference log-probs come from: model (a frozen second copy, sharded like the policy under
    # ZeRO-3), precomputed (once before training; no reference in memory while training), lora (train
    # adapters; the reference is the same weights with adapters disabled, no second copy at all).
    reference: str = "model"
    lora: LoraSpec = field(default_factory=LoraSpec)  # used by reference=lora


@dataclass
class EvalConfig:
    enabled: bool = True  # sample and judge after DPO
    num_prompts: int = 64  # held-out prompts to sample
    max_new_tokens: int = 32  # sample length limit
    temperature: float = 1.0  # 1.0 samples the model's own distribution, which the KL estimate needs
    batch_size: int = 32  # prompts per generate() call


@dataclass
class WandbConfig:
    enabled: bool = True  # log to Weights & Biases (online if reachable with a key, else offline files)
    mode: str = "auto"  # auto, online, offline or disabled
    project: str = "dpo"  # W&B project
    entity: Optional[str] = None  # W&B team or user; null uses the key's default
    group: Optional[str] = None  # runs grouped together, e.g. one sweep; null: the experiment name
    name: Optional[str] = None  # run name; null: from the command-line overrides (e.g. beta.value=0.1)
    tags: list[str] = field(default_factory=list)  # free-form tags


@dataclass
class CheckpointConfig:
    every_steps: int = 50  # DPO checkpoint interval in optimizer steps (and always at the end); 0: only at the end
    keep: int = 2  # complete checkpoints kept; older ones are deleted after a newer one is complete


@dataclass
class ResumeConfig:
    enabled: bool = True  # start from the newest complete checkpoint in the run directory, if any
    allow_changes: bool = False  # resume even if world size, global batch, seed or data changed


@dataclass
class FaultsConfig:
    max_bad_steps: int = 3  # consecutive NaN/inf-loss steps (each skipped) before the run stops
    collective_timeout_s: int = 600  # a rank waiting longer than this on the others fails the job


@dataclass
class MainConfig:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    beta: BetaConfig = MISSING
    deepspeed: DeepSpeedConfig = MISSING
    sft: StageConfig = MISSING
    dpo: DPOStageConfig = MISSING
    eval: EvalConfig = MISSING
    wandb: WandbConfig = MISSING
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: ResumeConfig = field(default_factory=ResumeConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    stage: str = "all"  # all, sft, dpo or eval
    seed: int = 0  # one seed for data generation, model init and trainers
    dry_run: bool = False  # build everything, print a summary, stop before training
    output_root: str = "outputs"  # runs/, sweeps/, sft/ and models/ live under it
    experiment: str = "default"  # experiment name: W&B group default, a label in results, the sweep directory
    nproc_per_node: int = 1  # processes per node in SLURM jobs
