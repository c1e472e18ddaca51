"""Labels -> pairs (train/models/labelers.py): make_pairs through data.ranking's strategies, the labelers scoring
exactly as the judges do (a real tiny reward model saved to disk), and a labeler that cannot label refused at start."""

from __future__ import annotations

import random

import pytest
import torch
from omegaconf import OmegaConf

from helpers.reward_model import fit_reward_model, scored_texts, two_label_copy
from train.config.compose import compose
from train.config.choices import LabelerKind
from train.config.schema import RankingSpec
from train.core.errors import ConfigError
from train.data import synthetic
from train.data.ranking import STRATEGIES, rank_to_pairs
from train.models import judges
from train.models.labelers import check_config, check_labeler, format_counts, load_labeler, make_pairs, score_answers
from train.pipeline.checks import check_config as start_checks

CPU = torch.device("cpu")


def group(prompt, scores, texts=None) -> dict:
    texts = texts or [f"answer {i}" for i in range(len(scores))]
    return {"prompt": prompt, "answers": [{"text": t, "model": "policy", "sample": i, "score": s}
                                          for i, (t, s) in enumerate(zip(texts, scores))]}


def ranking(strategy="best_vs_worst", min_margin=0.0):
    return OmegaConf.structured(RankingSpec(strategy=strategy, min_margin=min_margin))


def chosen_rejected(pairs) -> list[tuple[str, str]]:
    return [(p["chosen"], p["rejected"]) for p in pairs]


@pytest.mark.parametrize("strategy,expected", [
    ("best_vs_worst", [("answer 1", "answer 0")]),
    ("best_vs_rest", [("answer 1", "answer 2"), ("answer 1", "answer 0")]),
    ("all_pairs", [("answer 1", "answer 2"), ("answer 1", "answer 0"), ("answer 2", "answer 0")]),
    ("adjacent", [("answer 1", "answer 2"), ("answer 2", "answer 0")]),
])
def test_each_strategy_pairs_as_ranking_does(strategy, expected):
    pairs, counts = make_pairs([group("Review a lamp.", [1.0, 3.0, 2.0])], ranking(strategy))
    assert chosen_rejected(pairs) == expected and counts["pairs"] == len(expected)
    first = pairs[0]
    assert first == {"prompt": "Review a lamp.", "chosen": "answer 1", "rejected": expected[0][1],
                     "score_chosen": 3.0, "score_rejected": first["score_rejected"], "chosen_model": "policy",
                     "chosen_sample": 1, "rejected_model": "policy", "rejected_sample": int(expected[0][1][-1])}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_make_pairs_agrees_with_rank_to_pairs_on_random_scores(strategy):
    rng = random.Random(strategy)
    for _ in range(50):
        scores = [float(rng.randint(0, 3)) for _ in range(rng.randint(2, 6))]
        margin = rng.choice([0.0, 1.5])
        texts = [f"answer {i}" for i in range(len(scores))]
        want = rank_to_pairs("p", texts, scores, strategy, margin)
        try:
            pairs, _ = make_pairs([group("p", scores)], ranking(strategy, margin))
        except ConfigError:
            pairs = []
        assert chosen_rejected(pairs) == [(w["chosen"], w["rejected"]) for w in want]
        assert all(p["score_chosen"] - p["score_rejected"] >= max(margin, 1e-9) for p in pairs)


def test_ties_never_pair_and_min_margin_is_counted():
    groups = [group("a", [2.0, 2.0, 1.0]), group("b", [5.0, 5.0]), group("c", [1.0, 3.0, 2.0])]
    pairs, counts = make_pairs(groups, ranking("all_pairs"))
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("a", "answer 0", "answer 2"), ("a", "answer 1", "answer 2"),
        ("c", "answer 1", "answer 2"), ("c", "answer 1", "answer 0"), ("c", "answer 2", "answer 0")]
    assert counts == {"prompts": 3, "pairs": 5, "tied_prompts": 1, "ties_skipped": 2, "below_margin": 0,
                      "duplicate_answers": 0}
    pairs, counts = make_pairs(groups, ranking("all_pairs", min_margin=1.5))
    assert chosen_rejected(pairs) == [("answer 1", "answer 0")] and counts["below_margin"] == 4
    assert format_counts(counts).startswith("pairs: 1 from 3 prompts (1 with all answers tied")


def test_repeated_answers_rank_once_and_chat_prompts_get_assistant_messages():
    chat = [{"role": "user", "content": "Review a lamp."}]
    pairs, counts = make_pairs([group(chat, [1.0, 1.0, 4.0], ["same", "same", "other"])], ranking("all_pairs"))
    assert counts["duplicate_answers"] == 1 and len(pairs) == 1
    assert pairs[0]["prompt"] == chat and pairs[0]["chosen"] == [{"role": "assistant", "content": "other"}]
    assert pairs[0]["rejected_sample"] == 0  # the first sample of the repeated text


def test_all_answers_tied_is_one_line_saying_what_to_change():
    groups = [group("a", [1.0, 1.0]), group("b", [0.5, 0.5, 0.5]), group("c", [2.0, 2.0], ["x", "x"])]
    with pytest.raises(ConfigError, match=r"^all answers tied: none of 3 prompts .*raise generate.num_samples or "
                                          r"the sampling temperature, or use another labeler") as err:
        make_pairs(groups, ranking())
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"below data.ranking.min_margin=5; lower it"):
        make_pairs([group("a", [1.0, 2.0])], ranking(min_margin=5.0))


def test_the_sentiment_labeler_scores_as_the_lexicon_judge():
    cfg = compose(["labeler=sentiment"])
    check_labeler(cfg.labeler, cfg.data.conversational)
    prompts, texts, lexicon = scored_texts(20, "sentiment")
    scores = score_answers(load_labeler(cfg.labeler, cfg.data.conversational, CPU), [{"prompt": p, "text": t} for p, t in zip(prompts, texts)])
    assert scores == lexicon and len(set(scores)) > 3


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    return fit_reward_model(tmp_path_factory.mktemp("labeler_rm"), steps=10)


def test_a_reward_model_labeler_scores_exactly_as_the_judge(reward_model):
    overrides = ["data=hh_rlhf", "labeler=reward_model", f"labeler.name_or_path={reward_model}", "labeler.batch_size=4",
                 "judge=reward_model", f"judge.name_or_path={reward_model}", "judge.batch_size=4"]
    cfg = compose(overrides)
    start_checks(cfg)
    check_labeler(cfg.labeler, cfg.data.conversational)
    labeler, judge = load_labeler(cfg.labeler, cfg.data.conversational, CPU), judges.load_judge(cfg.judge, cfg.data.conversational, CPU)
    prompts, texts, _ = scored_texts(10, "labels")
    scores = score_answers(labeler, [{"prompt": p, "text": t} for p, t in zip(prompts, texts)])
    assert scores == judge.score(prompts, texts) and len(set(scores)) == 10
    # A text prompt among chat prompts is scored as its one user turn.
    mixed = score_answers(labeler, [{"prompt": prompts[0][0]["content"], "text": texts[0]},
                                    {"prompt": prompts[1], "text": texts[1]}])
    assert mixed == scores[:2]


def test_a_labeler_that_cannot_label_is_refused_at_start(reward_model, tmp_path):
    two_labels = two_label_copy(reward_model, tmp_path / "two_labels")
    cases = [
        (["labeler=reward_model", f"labeler.name_or_path={two_labels}"],
         f"labeler.name_or_path={two_labels}: a classifier with 2 labels; a reward model has one"),
        (["labeler=reward_model", "labeler.name_or_path=/no/such/rm"],
         "labeler.name_or_path=/no/such/rm: no such directory"),
        (["labeler=reward_model"], "labeler.name_or_path is required by labeler=reward_model"),
        ([], "labeler=none: on-policy rounds need labels"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message) as err:
            check_labeler((c := compose(overrides)).labeler, c.data.conversational)
        assert "\n" not in str(err.value)
    check_labeler((c := compose(["labeler=annotations"])).labeler, c.data.conversational)  # people label: nothing to load at start


def test_every_labeler_kind_is_known_and_the_group_composes():
    assert compose([]).labeler.kind == LabelerKind.none
    for option in ("none", "sentiment", "reward_model"):
        cfg = compose([f"labeler={option}"])
        check_config(cfg)  # composes and passes without reading files, as every option must
        assert cfg.labeler.kind == LabelerKind(option)
    assert compose(["labeler=sentiment"]).labeler.batch_size == 16  # a judge's fields, the schema's defaults
    rules = [k.value for k in LabelerKind if k.value not in ("none", "reward_model", "annotations")]
    assert rules and all(rule in judges.JUDGES for rule in rules)
    with pytest.raises(ConfigError, match=r"labeler.kind=lexicon: choose one of none, reward_model, sentiment"):
        compose(["labeler.kind=lexicon"])
    assert synthetic.judge("great") > 0  # the rule the sentiment labeler uses
