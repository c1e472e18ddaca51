"""The closed choices of the config, each defined once as an Enum (the schema's field types).

A wrong value fails at composition with the allowed ones listed (`dpo.reference=foo` -> "Invalid value 'foo',
expected one of [model, precomputed, lora]"), and code compares members (`cfg.dpo.reference == Reference.lora`), never
string literals. Members are also strings: they print, format, compare and serialize (json, the run's config.yaml) as
their value, so results, file names and fingerprints read exactly as the YAML does.
"""

from __future__ import annotations

import enum


class Choice(str, enum.Enum):
    """An Enum whose members are their own values as strings."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def names(cls) -> str:
        return ", ".join(member.value for member in cls)


class Stage(Choice):
    """stage=: the whole pipeline or one stage."""

    all = "all"  # SFT -> DPO -> evaluation (reward is not part of it)
    sft = "sft"
    dpo = "dpo"
    eval = "eval"
    reward = "reward"  # a reward model on the data group's pairs (TRL's RewardTrainer)


class Reference(Choice):
    """dpo.reference=: where the reference log-probs come from."""

    model = "model"  # a frozen second copy, sharded like the policy under ZeRO-3
    precomputed = "precomputed"  # computed once before training; no reference in memory while training
    lora = "lora"  # train adapters; the reference is the same weights with adapters disabled


class Batching(Choice):
    """dpo.batching=: the layout of a DPO micro-batch (train/trainer/layouts.py)."""

    auto = "auto"  # the fastest layout the model's attention can take
    padded = "padded"  # TRL's: chosen and rejected as separate padded rows
    packed = "packed"  # every sequence of the micro-batch in one row, no padding
    prefix_shared = "prefix_shared"  # the prompt once, chosen and rejected after it


class BetaSchedule(Choice):
    """beta.schedule: the DPO temperature over training (train/trainer/beta.py)."""

    constant = "constant"
    linear = "linear"
    cosine = "cosine"
    adaptive = "adaptive"  # set per batch from its margins (beta-DPO, Wu et al. 2024)


class JudgeKind(Choice):
    """judge.kind: what scores samples after DPO (train/models/judges.py); a rule's name is its train/data JUDGES key."""

    none = "none"
    reward_model = "reward_model"
    sentiment = "sentiment"  # the synthetic task's lexicon


class RankingStrategy(Choice):
    """data.ranking.strategy: scored responses -> pairs (train/data/ranking.py)."""

    best_vs_worst = "best_vs_worst"
    best_vs_rest = "best_vs_rest"
    all_pairs = "all_pairs"
    adjacent = "adjacent"


class WandbMode(Choice):
    """wandb.mode."""

    auto = "auto"  # online when a key and the network are there, else offline files
    online = "online"
    offline = "offline"
    disabled = "disabled"


class ZeroOption(Choice):
    """The deepspeed group's options, as the memory plan names its candidates."""

    none = "none"
    zero1 = "zero1"
    zero2 = "zero2"
    zero3 = "zero3"
    zero3_offload = "zero3_offload"


class KeepAtEnd(Choice):
    """checkpoint.keep_at_end: what a finished run keeps of its DPO checkpoints (each a full model with optimizer
    state); its policy/ holds the final model, which evaluation, a rerun (stage=eval) and the sweep report read."""

    all = "all"  # the checkpoint.keep newest, as during training: to train on from them
    last = "last"  # the newest one only
    none = "none"  # removed once the run is finished and its policy/ is complete


class LabelerKind(Choice):
    """labeler.kind: what scores each sampled answer (train/models/labelers.py)."""

    none = "none"  # no labeler configured
    reward_model = "reward_model"  # a sequence classifier with one label, as judge=reward_model
    sentiment = "sentiment"  # a rule of train/data JUDGES (the synthetic task's lexicon)
    annotations = "annotations"  # human labels: reserved, refused until an annotation source exists


class GenerateKind(Choice):
    """generate.kind: where the DPO pairs come from."""

    none = "none"  # the data group's pairs (offline DPO)
    on_policy = "on_policy"  # sampled from the model being tuned, labelled and paired, in rounds


class RoundReference(Choice):
    """generate.reference: the DPO reference of rounds after the first."""

    sft = "sft"  # the SFT model in every round: the KL of every round is to the same model
    previous = "previous"  # the previous round's policy (each round is plain DPO from its start)
