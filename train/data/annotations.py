"""Human labels -> scores -> preference pairs, with the agreement between annotators and a count of every label
that was not used.

Each annotation (one annotator, one task) is read into what it says about the task's answers:
  rating      slot -> 1..5. An annotation rating some answers but not all is `partial`: its ratings count
              (partial=use, the default) or the whole annotation is left out (partial=skip); either way counted.
  best_worst  the slot picked as best and the slot picked as worst. Needs both, on different answers.
Skipped ones (Label Studio's skip button: was_cancelled), empty ones (no result), and ones that name no answer of
the task (a slot the task leaves empty, best = worst) are counted and never used.

Scores per answer, over the annotators whose annotation is used:
  rating      the mean rating; an answer nobody rated gets no score and is left out of ranking (counted);
  best_worst  votes: +1 for each annotator who picked it best, -1 for each who picked it worst (unpicked: 0).
The scored answers of a task become pairs through train/data/ranking.py (data.ranking.strategy, min_margin):
a pair needs a score difference > 0, so ties never pair (counted).

Agreement:
  rating      Krippendorff's alpha over (task, answer) units, ordinal (ratings are ordered grades, not
              distances); interval alpha alongside. None when fewer than two annotators rated any unit.
  best_worst  over every two annotators who both labeled a task: the share that picked the same best answer,
              and the same worst one.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter

import krippendorff
import numpy as np

from train.config.choices import Choice, RankingStrategy
from train.data.annotation_tasks import MAX_RATING, Scheme, task_answers
from train.data.ranking import candidate_pairs, prefers


# Every count the report holds, zeros included, so a reader sees what was looked for.
COUNTS = ("tasks", "answers", "annotations_used", "annotations_partial", "annotations_skipped", "annotations_empty",
          "annotations_invalid", "drafts_not_submitted", "tasks_without_used_annotation", "answers_unrated",
          "ties_not_paired", "below_min_margin", "pairs")


class Partial(Choice):
    """What a rating annotation that leaves some answers unrated counts for."""

    use = "use"  # its ratings count for the answers it rates
    skip = "skip"  # left out whole


def read_annotation(annotation: dict, scheme: Scheme, slots: set[int]) -> tuple[str, dict]:
    """(status, labels): status one of used/partial/skipped/empty/invalid; labels slot -> rating, or best/worst."""
    if annotation.get("was_cancelled"):
        return "skipped", {}
    results = annotation.get("result") or []
    if not results:
        return "empty", {}
    if scheme is Scheme.rating:
        ratings = {}
        for item in results:
            name, value = str(item.get("from_name", "")), (item.get("value") or {}).get("rating")
            if name.startswith("rating_") and isinstance(value, (int, float)) and 1 <= value <= MAX_RATING:
                slot = int(name.removeprefix("rating_"))
                if slot in slots:
                    ratings[slot] = float(value)
        if not ratings:
            return "invalid", {}
        return ("used" if set(ratings) == slots else "partial"), ratings
    picks = {}
    for item in results:
        choices = (item.get("value") or {}).get("choices") or []
        # The Choice alias is the slot number; a value ("Answer 2") from an alias-less export reads the same.
        slot = re.search(r"(\d+)$", str(choices[0])) if len(choices) == 1 else None
        if item.get("from_name") in ("best", "worst") and slot:
            picks[item["from_name"]] = int(slot.group(1))
    if set(picks) != {"best", "worst"}:
        return ("partial" if picks else "invalid"), {}
    if picks["best"] == picks["worst"] or not set(picks.values()) <= slots:
        return "invalid", {}
    return "used", picks


def aggregate(tasks: list[dict], scheme: Scheme, strategy: RankingStrategy = RankingStrategy.best_vs_worst,
              min_margin: float = 0.0,
              partial: Partial = Partial.use) -> tuple[list[dict], dict]:
    """(pairs in TRL's format with their ids and scores, the report with every count and the agreement)."""
    counts = Counter({key: 0 for key in COUNTS})
    pairs, units, votes = [], {}, []
    annotators = set()
    for task in tasks:
        answers = task_answers(task)
        slots = {a["slot"] for a in answers}
        counts["tasks"] += 1
        counts["answers"] += len(answers)
        labels = {}
        for annotation in task.get("annotations") or []:
            status, said = read_annotation(annotation, scheme, slots)
            counts[f"annotations_{status}"] += 1
            if status == "used" or (status == "partial" and scheme is Scheme.rating and partial is Partial.use):
                who = annotation.get("completed_by")
                who = who.get("id") if isinstance(who, dict) else who
                labels[who] = said
                annotators.add(who)
        counts["drafts_not_submitted"] += len(task.get("drafts") or [])
        if not labels:
            counts["tasks_without_used_annotation"] += 1
        scores = score_answers(labels, scheme, slots)
        counts["answers_unrated"] += len(slots) - len(scores)
        for who, said in labels.items():
            if scheme is Scheme.rating:
                for slot, value in said.items():
                    units.setdefault((task.get("id"), slot), {})[who] = value
        if scheme is Scheme.best_worst and len(labels) > 1:
            votes.append(list(labels.values()))
        pairs += task_pairs(task, answers, scores, len(labels), strategy, min_margin, counts)
    if any(isinstance(p["prompt"], list) for p in pairs):
        pairs = [as_chat(p) for p in pairs]
    counts["pairs"] = len(pairs)
    report = {"scheme": scheme.value, "strategy": strategy, "min_margin": min_margin, "partial": partial.value,
              "annotators": len(annotators), "counts": dict(sorted(counts.items())),
              "agreement": rating_agreement(units) if scheme is Scheme.rating else choice_agreement(votes)}
    return pairs, report


def score_answers(labels: dict, scheme: Scheme, slots: set[int]) -> dict[int, float]:
    """slot -> score of the answers the used labels score (see the module doc)."""
    if scheme is Scheme.rating:
        given = {s: [said[s] for said in labels.values() if s in said] for s in sorted(slots)}
        return {s: sum(v) / len(v) for s, v in given.items() if v}
    if not labels:
        return {}
    return {s: float(sum((p["best"] == s) - (p["worst"] == s) for p in labels.values())) for s in sorted(slots)}


def task_pairs(task: dict, answers: list[dict], scores: dict[int, float], annotators: int, strategy: RankingStrategy,
               min_margin: float, counts: Counter) -> list[dict]:
    data = task["data"]
    by_slot = {a["slot"]: a for a in answers}
    slots = sorted(scores)
    chat = isinstance(data.get("prompt_value"), list)
    out = []
    for hi, lo in candidate_pairs([scores[s] for s in slots], strategy):
        difference = scores[slots[hi]] - scores[slots[lo]]
        if difference == 0:
            counts["ties_not_paired"] += 1
            continue
        if not prefers(difference, min_margin):
            counts["below_min_margin"] += 1
            continue
        chosen, rejected = by_slot[slots[hi]], by_slot[slots[lo]]
        out.append({"prompt": data.get("prompt_value", data["prompt"]),
                    "chosen": [{"role": "assistant", "content": chosen["text"]}] if chat else chosen["text"],
                    "rejected": [{"role": "assistant", "content": rejected["text"]}] if chat else rejected["text"],
                    "score_chosen": scores[slots[hi]], "score_rejected": scores[slots[lo]],
                    "chosen_model": chosen["model"], "chosen_sample": chosen["sample"],
                    "rejected_model": rejected["model"], "rejected_sample": rejected["sample"],
                    "prompt_id": data["prompt_id"], "annotators": annotators})
    return out


def as_chat(pair: dict) -> dict:
    """A text pair as chat messages: one file of pairs mixing text and chat prompts would not load as one table."""
    if isinstance(pair["prompt"], list):
        return pair
    return {**pair, "prompt": [{"role": "user", "content": pair["prompt"]}],
            "chosen": [{"role": "assistant", "content": pair["chosen"]}],
            "rejected": [{"role": "assistant", "content": pair["rejected"]}]}


def rating_agreement(units: dict) -> dict:
    """Krippendorff's alpha of the ratings: annotators x (task, answer) units, missing ratings left open."""
    raters = sorted({who for unit in units.values() for who in unit}, key=str)
    shared = sum(len(unit) > 1 for unit in units.values())
    out = {"measure": "krippendorff_alpha", "annotators": len(raters), "units": len(units),
           "units_rated_twice_or_more": shared, "alpha_ordinal": None, "alpha_interval": None}
    if len(raters) < 2 or not shared:
        out["note"] = "no answer rated by two annotators: agreement undefined"
        return out
    matrix = np.array([[unit.get(who, np.nan) for unit in units.values()] for who in raters], dtype=float)
    for level in ("ordinal", "interval"):
        try:
            out[f"alpha_{level}"] = round(float(krippendorff.alpha(
                reliability_data=matrix, level_of_measurement=level, value_domain=list(range(1, MAX_RATING + 1)))), 4)
        except ValueError as err:  # one value everywhere: agreement is not defined, not perfect
            out["note"] = str(err)
    return out


def choice_agreement(votes: list[list[dict]]) -> dict:
    """Share of annotator pairs (within a task) that picked the same best answer, and the same worst one."""
    compared = same_best = same_worst = 0
    for task_votes in votes:
        for a, b in itertools.combinations(task_votes, 2):
            compared += 1
            same_best += a["best"] == b["best"]
            same_worst += a["worst"] == b["worst"]
    return {"measure": "pairwise_agreement", "annotator_pairs": compared,
            "best": round(same_best / compared, 4) if compared else None,
            "worst": round(same_worst / compared, 4) if compared else None}
