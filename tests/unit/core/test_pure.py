"""Tier 2: pure functions on toy rows: data generation, the judge, pairs, schedules, metrics."""

import math

import pytest

from helpers.chat import to_conversational
from train.data import synthetic
from train.models.sampling import win_rate
from train.trainer.beta import SCHEDULES


def test_generation_is_deterministic_per_seed():
    assert synthetic.make_sft_rows(50, seed=3) == synthetic.make_sft_rows(50, seed=3)
    assert synthetic.make_sft_rows(50, seed=3) != synthetic.make_sft_rows(50, seed=4)
    assert synthetic.make_preference_rows(40, 3, "train") == synthetic.make_preference_rows(40, 3, "train")
    # held-out prompts come from a different stream than training
    assert synthetic.make_preference_rows(40, 3, "train") != synthetic.make_preference_rows(40, 3, "test")


def test_judge_counts_lexicon_words():
    assert synthetic.judge("a great and wonderful film") == 2.0
    assert synthetic.judge("Terrible, AWFUL plot; great cast") == -1.0
    assert synthetic.judge("the plot") == 0.0
    assert synthetic.judge("") == 0.0


def test_sft_data_is_neutral_on_average():
    rows = synthetic.make_sft_rows(3000, seed=0)
    mean = sum(synthetic.judge(r["completion"]) for r in rows) / len(rows)
    assert abs(mean) < 0.3


def test_pairs_prefer_the_higher_judged_response_and_drop_ties():
    pairs = synthetic.build_pairs("p", ["great", "bad", "the", "fine"], [1.0, -1.0, 0.0, 0.0])
    assert {"prompt": "p", "chosen": "great", "rejected": "bad"} in pairs
    assert {"prompt": "p", "chosen": "the", "rejected": "bad"} in pairs
    assert all({p["chosen"], p["rejected"]} != {"the", "fine"} for p in pairs)  # the tie
    assert len(pairs) == 5
    rows = synthetic.make_preference_rows(300, seed=1, split="train")
    assert len(rows) == 300
    assert all(synthetic.judge(r["chosen"]) > synthetic.judge(r["rejected"]) for r in rows)


def test_to_conversational():
    row = to_conversational({"prompt": "hi", "chosen": "a", "rejected": "b", "id": 3})
    assert row["prompt"] == [{"role": "user", "content": "hi"}]
    assert row["chosen"] == [{"role": "assistant", "content": "a"}]
    assert row["id"] == 3


def test_win_rate_counts_ties_half():
    assert win_rate([1, 2, 3, 0], [0, 2, 4, -1]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_beta_schedules_start_and_end_where_configured(name):
    schedule = SCHEDULES[name]
    final = 0.1 if name != "constant" else None
    assert schedule(0, 100, 0.5, final, 0) == pytest.approx(0.5)
    end = schedule(100, 100, 0.5, final, 0)
    assert end == pytest.approx(0.5 if name == "constant" else 0.1)
    if name != "constant":
        assert schedule(10, 100, 0.5, 0.1, warmup=20) == 0.5  # held during warmup
        middle = schedule(60, 100, 0.5, 0.1, warmup=20)
        assert 0.1 < middle < 0.5 and math.isfinite(middle)


def test_tiny_tokenizer_round_trips_through_autotokenizer(tmp_path):
    """transformers 5 picks the tokenizer class from config.json: check the saved one loads back identical."""
    from transformers import AutoTokenizer

    from train.models.tiny import build_tiny_model

    spec = dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=64)
    path = build_tiny_model(tmp_path / "tiny", spec, synthetic.corpus(0, n=200), seed=0)
    tok = AutoTokenizer.from_pretrained(path)
    text = "<|user|>write a review of the comedy set in paris<|end|><|assistant|> a great film<|end|>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[:3] == ["<|user|>", "Ġwrite", "Ġa"]
    assert tok.decode(ids).replace(" ", "") == text.replace(" ", "")
    assert tok("zebra!")["input_ids"]  # unseen text still encodes (byte-level)
    assert tok.eos_token == "<|end|>" and tok.chat_template
