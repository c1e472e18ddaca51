"""Data that would be trained on wrongly or slowly: unknown chat roles are dropped as malformed;
a huge response is cut before tokenizing, with the tokens TRL keeps unchanged."""

import json
import time

import pytest

from train.config.compose import compose
from train.core.errors import ConfigError
from train.data import prepare
from train.data.build import cut_long_texts, longest_token_chars
from train.data.rows import ROLE_NAMES
from train.data.validation import CHAT_ROLES, Tally, check_pair, token_ids
from train.models.loading import ensure_base_model, load_tokenizer
from helpers.typed import typed


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("guards")


@pytest.fixture(scope="module")
def tokenizer(root):
    cfg = compose([f"output_root={root}"])
    return load_tokenizer(cfg.model, ensure_base_model(typed(cfg).model), cfg.data.conversational)


def test_every_chat_role_has_a_plain_rendering():
    assert set(ROLE_NAMES) == set(CHAT_ROLES)


def test_a_prompt_with_an_unknown_role_is_malformed():
    pair = {"prompt": [{"role": "wizard", "content": "cast a spell"}, {"role": "user", "content": "hi"}],
            "chosen": "a", "rejected": "b"}
    problem = check_pair(pair)
    assert problem is not None and problem.reason == "malformed" and "wizard" in problem.field
    pair["prompt"][0]["role"] = "system"
    assert check_pair(pair) is None


def test_unknown_roles_are_counted_and_dropped_end_to_end(root, tmp_path, tokenizer):
    rows = [{"prompt": [{"role": "user", "content": f"question {i}"}], "chosen": f"good answer {i}", "rejected": f"bad {i}"}
            for i in range(40)]
    rows[3]["prompt"] = [{"role": "wizard", "content": "abracadabra"}]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose(["data=custom", f"data.source={source}", f"output_root={root}", "data.max_drop_fraction=0.5"])
    files, report = prepare(typed(cfg), tokenizer)
    assert report["dropped"]["malformed"] == 1
    kept = [json.loads(line) for name in ("train_pairs", "test_pairs") for line in open(files[name])]
    assert len(kept) == 39 and all(m["role"] in CHAT_ROLES for r in kept for m in r["prompt"])


def test_a_huge_response_is_cut_before_tokenizing_and_trl_keeps_the_same_tokens(tokenizer):
    max_length = 64
    huge = "great film " * 2_000_000  # 22 MB
    row = {"prompt": "review the film", "chosen": huge, "rejected": "bad film", "_where": "train#0"}
    start = time.perf_counter()
    (cut,) = cut_long_texts([row], Tally(), tokenizer, max_length, "keep_start")
    assert time.perf_counter() - start < 5
    assert len(cut["chosen"]) == (max_length + 1) * longest_token_chars(tokenizer) < len(huge)
    assert cut["rejected"] == "bad film"
    # The first max_length tokens of prompt + response are the same with the full and the cut text.
    sample = huge[: 50 * len(cut["chosen"])]  # long enough to be cut, short enough to tokenize here
    _, (full_ids,) = token_ids(tokenizer, ["review the film"], [[sample]], False, tokenizer.eos_token)
    _, (cut_ids,) = token_ids(tokenizer, ["review the film"], [[cut["chosen"]]], False, tokenizer.eos_token)
    assert full_ids[0][:max_length] == cut_ids[0][:max_length]


def test_a_huge_prompt_is_dropped_as_too_long_without_tokenizing(tokenizer):
    tally = Tally()
    rows = [{"prompt": "x " * 10_000_000, "chosen": "a", "rejected": "b", "_where": "train#7"}]
    assert cut_long_texts(rows, tally, tokenizer, 64, "keep_start") == []
    assert tally.counts["dropped"]["prompt_too_long"] == 1


def test_columns_that_do_not_match_the_file_are_named_with_what_it_has(root, tmp_path, tokenizer):
    source = tmp_path / "pairs.csv"
    source.write_text("question,good,bad\n" + "".join(f"q{i},g{i},b{i}\n" for i in range(10)))
    cfg = compose(["data=custom", f"data.source={source}", f"output_root={root}", "data.columns.prompt=question"])
    with pytest.raises(ConfigError) as err:
        prepare(typed(cfg), tokenizer)
    assert str(err.value) == (f"data=custom: {source} has no column(s) chosen, rejected (its columns: question, good, "
                              "bad); set data.columns.chosen=<column>, data.columns.rejected=<column>; or for two "
                              "responses and a label: data.columns.responses=[<column>,<column>] data.columns.preferred=<column>")
