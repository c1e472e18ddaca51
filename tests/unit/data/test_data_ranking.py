"""Ranking to pairs (train/data/ranking.py): strategies, ties, margins, determinism. Pure, no I/O."""

import pytest

from train.data.ranking import STRATEGIES, rank_to_pairs

RESPONSES = ["a", "b", "c", "d"]
SCORES = [1.0, 4.0, 2.0, 3.0]  # ranking: b > d > c > a


def pairs(strategy, scores=SCORES, responses=RESPONSES, min_margin=0.0):
    return [(p["chosen"], p["rejected"]) for p in rank_to_pairs("q", responses, scores, strategy, min_margin)]


def test_best_vs_worst_is_the_default_and_gives_one_pair():
    assert [(p["chosen"], p["rejected"]) for p in rank_to_pairs("q", RESPONSES, SCORES)] == [("b", "a")]
    assert rank_to_pairs("q", RESPONSES, SCORES)[0]["prompt"] == "q"


@pytest.mark.parametrize("strategy,expected", [
    ("best_vs_worst", [("b", "a")]),
    ("best_vs_rest", [("b", "d"), ("b", "c"), ("b", "a")]),
    ("all_pairs", [("b", "d"), ("b", "c"), ("b", "a"), ("d", "c"), ("d", "a"), ("c", "a")]),
    ("adjacent", [("b", "d"), ("d", "c"), ("c", "a")]),
])
def test_strategies(strategy, expected):
    assert pairs(strategy) == expected


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ties_never_pair(strategy):
    assert pairs(strategy, scores=[2.0, 2.0, 2.0, 2.0]) == []
    scores = {"a": 3.0, "b": 3.0, "c": 1.0, "d": 1.0}
    tied = pairs(strategy, scores=list(scores.values()))
    assert tied
    assert all(scores[chosen] > scores[rejected] for chosen, rejected in tied)


def test_ties_at_the_top_pick_the_earlier_response():
    assert pairs("best_vs_worst", scores=[5.0, 5.0, 1.0, 0.0]) == [("a", "d")]
    assert pairs("adjacent", scores=[5.0, 5.0, 1.0, 1.0]) == [("b", "c")]  # tied neighbours skip


@pytest.mark.parametrize("strategy,expected", [
    ("best_vs_worst", [("b", "a")]),  # 3 apart
    ("best_vs_rest", [("b", "c"), ("b", "a")]),  # d is only 1 below b
    ("all_pairs", [("b", "c"), ("b", "a"), ("d", "a")]),
    ("adjacent", []),  # neighbours are 1 apart
])
def test_min_margin(strategy, expected):
    assert pairs(strategy, min_margin=2.0) == expected


def test_degenerate_inputs():
    assert pairs("best_vs_worst", scores=[], responses=[]) == []
    assert pairs("all_pairs", scores=[1.0], responses=["a"]) == []
    with pytest.raises(ValueError, match="choose one of"):
        rank_to_pairs("q", ["a", "b"], [1, 0], "best")
    with pytest.raises(ValueError, match="2 responses but 1 scores"):
        rank_to_pairs("q", ["a", "b"], [1], "all_pairs")


def test_negative_and_integer_scores():
    assert pairs("best_vs_worst", scores=[-3, 0, -1, 7]) == [("d", "a")]
