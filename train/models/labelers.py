"""Labels -> pairs: the on-policy answers to each prompt scored by a labeler, then ranked into preference pairs.

labeler=reward_model scores each (prompt, answer) with the judge's own code (train/models/judges.py
RewardModelJudge: the reward model's tokenizer and chat template, one score per distinct text), so a labeler and
a judge loaded from the same directory give the same numbers. labeler=<rule> (train/data JUDGES, e.g. sentiment)
scores the answer text alone. labeler.kind=annotations (human labels) is reserved and refused for now.

make_pairs ranks each prompt's answers with data.ranking's strategies (train/data/ranking.py): ties never pair,
and a difference under min_margin does not either.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from train.config.choices import LabelerKind
from train.config.schema import LabelerConfig
from train.core.errors import ConfigError
from train.data import JUDGES
from train.data.ranking import STRATEGIES, candidate_pairs, prefers
from train.models.judges import (
    Judge,
    RuleJudge,
    check_reward_model_settings,
    check_reward_model_spec,
    load_reward_model,
)

MODEL_KINDS = (LabelerKind.none, LabelerKind.reward_model, LabelerKind.annotations)  # every other kind is a rule
# What to change when the answers give no pair at all (the sampling settings are the generation group's).
MORE_SPREAD = "raise generate.num_samples or the sampling temperature, or use another labeler (labeler=...)"


def kind_of(labeler: LabelerConfig) -> LabelerKind:
    """labeler.kind as the Enum (a composed config holds the member; a plain dict may hold its value)."""
    kind = labeler.kind
    try:
        return kind if isinstance(kind, LabelerKind) else LabelerKind(kind)
    except ValueError:
        raise ConfigError(f"labeler.kind={kind}: choose one of {', '.join(k.value for k in LabelerKind)} "
                          "(labeler=<name> picks one)") from None


def check_config(cfg: DictConfig) -> None:
    """The labeler group, without reading any file: a kind that can label, and reward_model's sizes."""
    check_settings(cfg.labeler)


def check_settings(labeler: LabelerConfig) -> None:
    kind = kind_of(labeler)
    if kind not in MODEL_KINDS and kind.value not in JUDGES:  # an Enum member without a rule behind it
        raise ConfigError(f"labeler.kind={kind.value}: no such rule in train/data JUDGES "
                          f"({', '.join(JUDGES)}); pick another labeler")
    if kind == LabelerKind.reward_model:
        check_reward_model_settings(labeler, "labeler")


def check_labeler(labeler: LabelerConfig, conversational: bool) -> None:
    """At the start of on-policy rounds, before any sampling: a labeler that can label, and for a reward model
    its config (one label) and tokenizer (a chat template for chat data). Reads no weights."""
    check_settings(labeler)
    kind = kind_of(labeler)
    if kind == LabelerKind.none:
        raise ConfigError("labeler=none: on-policy rounds need labels for their answers; pick labeler=reward_model "
                          "(with labeler.name_or_path) or labeler=sentiment")
    if kind == LabelerKind.reward_model:
        check_reward_model_spec(labeler, conversational, "labeler")


def load_labeler(labeler: LabelerConfig, conversational: bool, device: torch.device, progress: bool = False) -> Judge:
    """The configured labeler (check_labeler first); a reward model is loaded whole onto `device`."""
    check_labeler(labeler, conversational)
    kind = kind_of(labeler)
    if kind == LabelerKind.reward_model:
        return load_reward_model(labeler, conversational, device, progress, key="labeler",
                                 desc="labeling answers")
    return RuleJudge(JUDGES[kind.value])


def score_answers(labeler: Judge, rows: list[dict]) -> list[float]:
    """One score per row {prompt, text}: the prompt as the data gives it (text or chat messages), the answer's
    text. Text prompts among chat prompts become one user turn (as data.conversational presents them): a reward
    model renders one batch either all through its chat template or all as plain text."""
    prompts = [row["prompt"] for row in rows]
    if any(isinstance(p, list) for p in prompts):
        prompts = [p if isinstance(p, list) else [{"role": "user", "content": p}] for p in prompts]
    return [float(s) for s in labeler.score(prompts, [row["text"] for row in rows])]


def make_pairs(groups: list[dict], ranking) -> tuple[list[dict], dict]:
    """Preference pairs from scored answers. Each group is one prompt: {prompt, answers: [{text, model, sample,
    score}]}; `ranking` holds data.ranking's strategy and min_margin. Returns (pairs, counts): pairs in TRL's
    format (prompt, chosen, rejected: answers as text, or as one assistant message when the prompt is chat
    messages), with score_chosen, score_rejected, chosen_model, chosen_sample, rejected_model, rejected_sample;
    counts of prompts, pairs, tied_prompts (every answer scored the same: no pair), ties_skipped and
    below_margin (pairs the strategy considered but left out), duplicate_answers (an answer text repeated within
    its prompt: ranked once, the first sample). No pair at all is a ConfigError saying what to change."""
    strategy, min_margin = str(ranking.strategy), float(ranking.min_margin)
    if strategy not in STRATEGIES:
        raise ConfigError(f"data.ranking.strategy={strategy}: choose one of {', '.join(STRATEGIES)}")
    counts = dict.fromkeys(("prompts", "pairs", "tied_prompts", "ties_skipped", "below_margin", "duplicate_answers"), 0)
    pairs = []
    for group in groups:
        counts["prompts"] += 1
        answers = distinct_answers(group["answers"])
        counts["duplicate_answers"] += len(group["answers"]) - len(answers)
        scores = [float(a["score"]) for a in answers]
        if len(set(scores)) == 1 and len(group["answers"]) > 1:  # identical samples tie too
            counts["tied_prompts"] += 1
        for hi, lo in candidate_pairs(scores, strategy):
            difference = scores[hi] - scores[lo]
            if prefers(difference, min_margin):
                pairs.append(pair_row(group["prompt"], answers[hi], answers[lo]))
            elif difference == 0 and hi != lo:
                counts["ties_skipped"] += 1
            elif hi != lo:
                counts["below_margin"] += 1
    counts["pairs"] = len(pairs)
    if not pairs:
        raise ConfigError(no_pair_message(counts, min_margin))
    return pairs, counts


def distinct_answers(answers: list[dict]) -> list[dict]:
    """The answers in order, each text once: a repeated sample would pair with the same rival twice."""
    seen: dict[str, dict] = {}
    for answer in answers:
        seen.setdefault(answer["text"], answer)
    return list(seen.values())


def pair_row(prompt, chosen: dict, rejected: dict) -> dict:
    chat = isinstance(prompt, list)

    def answer(a: dict):
        return [{"role": "assistant", "content": a["text"]}] if chat else a["text"]

    return {"prompt": prompt, "chosen": answer(chosen), "rejected": answer(rejected),
            "score_chosen": float(chosen["score"]), "score_rejected": float(rejected["score"]),
            "chosen_model": chosen.get("model"), "chosen_sample": chosen.get("sample"),
            "rejected_model": rejected.get("model"), "rejected_sample": rejected.get("sample")}


def no_pair_message(counts: dict, min_margin: float) -> str:
    if not counts["prompts"]:
        return "no answers to pair: no prompt was sampled"
    if counts["below_margin"]:
        return (f"no pair: of {counts['prompts']} prompts, {counts['tied_prompts']} had all answers tied and the "
                f"other score differences were below data.ranking.min_margin={min_margin:g}; lower it, or "
                f"{MORE_SPREAD}")
    return (f"all answers tied: none of {counts['prompts']} prompts gave two answers with different scores; "
            f"{MORE_SPREAD}")


def format_counts(counts: dict) -> str:
    """make_pairs' counts as one line for the console."""
    return (f"pairs: {counts['pairs']} from {counts['prompts']} prompts ({counts['tied_prompts']} with all answers "
            f"tied, {counts['ties_skipped']} tied pairs and {counts['below_margin']} below min_margin skipped, "
            f"{counts['duplicate_answers']} repeated answers)")

