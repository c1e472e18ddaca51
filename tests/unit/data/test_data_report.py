"""Every source's fixture (tests/fixtures/<name>/, native schema) through the real loading path with the
tiny model's tokenizer and the run's max_length: the pairs that come out and the report's counts."""

import json
import threading
from pathlib import Path

import pytest

from train.config.compose import compose
from train.core.errors import ConfigError
from train.data import load_preference_data, prepare
from train.models.loading import ensure_base_model, load_tokenizer
from helpers.typed import typed

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CUSTOM_COLUMNS = ["data.columns.prompt=instruction", "data.columns.chosen=better", "data.columns.rejected=worse"]
# name -> (overrides, train pairs, test pairs, dropped, filtered, fixed): nonzero counts only.
EXPECTED = {
    "webgpt_comparisons": ([], 4, 1, {"missing_field": 1, "not_a_string": 1, "empty": 1, "identical": 1,
                                      "prompt_too_long": 1, "duplicate_pair": 1}, {"tie": 1}, {}),
    "summarize_from_feedback": ([], 3, 3, {"missing_field": 2, "empty": 1, "malformed": 2, "identical": 1,
                                           "prompt_too_long": 1}, {}, {"response_truncated": 2}),
    "eli5": ([], 6, 1, {}, {"tie": 1, "single_response": 1}, {"empty": 1, "response_truncated": 1}),
    "hc3": (["data.source=tests/fixtures/hc3/all.jsonl"], 4, 1, {"empty": 2, "identical": 1}, {}, {}),
    "hh_rlhf": ([], 8, 3, {"missing_field": 1, "not_a_string": 1, "empty": 1, "malformed": 1, "identical": 1,
                           "prompt_too_long": 1, "response_truncated_away": 1, "duplicate_pair": 2}, {}, {}),
    "ultrafeedback_binarized": ([], 4, 2, {"missing_field": 1, "empty": 1, "malformed": 1}, {"tie": 1}, {}),
    "shp": ([], 4, 2, {"missing_field": 1, "empty": 1, "identical": 1}, {}, {}),
    "custom": (["data.source=tests/fixtures/custom/pairs.jsonl", *CUSTOM_COLUMNS], 18, 2,
               {"empty": 1, "identical": 1}, {}, {}),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("data_report")


def config(root: Path, name: str, *overrides: str):
    defaults = [] if name == "synthetic" or any(o.startswith("data.source=") for o in overrides) else [f"data.source=tests/fixtures/{name}"]
    return compose([f"data={name}", f"output_root={root}", *defaults, *overrides])


@pytest.fixture(scope="module")
def tokenizer(root):
    cfg = config(root, "synthetic")
    return load_tokenizer(cfg.model, ensure_base_model(typed(cfg).model), cfg.data.conversational)


def nonzero(counts: dict) -> dict:
    return {k: v for k, v in counts.items() if v}


def rows(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_counts(name, root, tokenizer, monkeypatch):
    monkeypatch.chdir(FIXTURES.parent.parent)  # data.source paths are relative to the repository
    overrides, n_train, n_test, dropped, filtered, fixed = EXPECTED[name]
    files, report = prepare(typed(config(root, name, *overrides)), tokenizer)
    assert (report["pairs"]["train"], report["pairs"]["test"]) == (n_train, n_test)
    assert nonzero(report["dropped"]) == dropped
    assert nonzero(report["filtered"]) == filtered
    assert nonzero(report["fixed"]) == fixed
    assert report["max_length"] == 128  # conf/dpo/default.yaml
    train = rows(files["train_pairs"])
    assert len(train) == n_train and len(rows(files["test_pairs"])) == n_test
    for pair in train:  # TRL's conversational format: a message list per field, one assistant turn per response
        assert pair["prompt"][-1]["role"] == "user"
        assert [m["role"] for m in pair["chosen"]] == ["assistant"] == [m["role"] for m in pair["rejected"]]
        assert pair["chosen"] != pair["rejected"]
    test_prompts = {json.dumps(p["prompt"]) for p in rows(files["test_pairs"])}
    assert {json.dumps(p["prompt"]) for p in rows(files["eval_prompts"])} == test_prompts
    assert not test_prompts & {json.dumps(p["prompt"]) for p in train}  # held out means held out


def test_chat_sources_keep_multi_turn_prompts(root, tokenizer, monkeypatch):
    monkeypatch.chdir(FIXTURES.parent.parent)
    files, _ = prepare(typed(config(root, "hh_rlhf")), tokenizer)
    multi = [p for p in rows(files["train_pairs"]) if len(p["prompt"]) > 1]
    assert multi and [m["role"] for m in multi[0]["prompt"]] == ["user", "assistant", "user"]
    assert multi[0]["prompt"][1]["content"] == "hello, how can i help?"
    files, report = prepare(typed(config(root, "ultrafeedback_binarized")), tokenizer)
    assert report["sft"] == {"source": "train_sft", "rows": 2, "dropped": {**report["sft"]["dropped"], "malformed": 1}}
    sft = rows(files["sft"])
    assert sft[0]["completion"] == [{"role": "assistant", "content": "Soft rain on the roof / the garden drinks in silence / puddles hold the sky"}]


def test_plain_text_renders_chat_as_transcript(root, tokenizer, monkeypatch):
    monkeypatch.chdir(FIXTURES.parent.parent)
    files, report = prepare(typed(config(root, "hh_rlhf", "data.conversational=false")), tokenizer)
    first = rows(files["train_pairs"])[0]
    assert first == {"prompt": "Human: write a review of the comedy set in paris\n\nAssistant:",
                     "chosen": " a great and charming film", "rejected": " a dull and boring film"}
    files, _ = prepare(typed(config(root, "webgpt_comparisons", "data.conversational=false")), tokenizer)
    assert isinstance(rows(files["train_pairs"])[0]["prompt"], str)


def test_sft_rows_come_from_chosen_responses_of_train_pairs(root, tokenizer, monkeypatch):
    monkeypatch.chdir(FIXTURES.parent.parent)
    files, report = prepare(typed(config(root, "shp")), tokenizer)
    train, sft = rows(files["train_pairs"]), rows(files["sft"])
    assert report["sft"]["source"] == "chosen responses of the train pairs"
    assert [(r["prompt"], r["completion"]) for r in sft] == [(p["prompt"], p["chosen"]) for p in train]


@pytest.mark.parametrize("strategy,n_pairs", [("best_vs_worst", 3), ("best_vs_rest", 6), ("all_pairs", 10), ("adjacent", 6)])
def test_ranked_custom_data(strategy, n_pairs, root, tokenizer, monkeypatch):
    monkeypatch.chdir(FIXTURES.parent.parent)
    cfg = config(root, "custom", "data.source=tests/fixtures/custom/ranked.jsonl", "data.columns.responses=responses",
                 "data.columns.scores=scores", f"data.ranking.strategy={strategy}")
    _, report = prepare(typed(cfg), tokenizer)
    assert report["pairs"]["train"] + report["pairs"]["test"] == n_pairs
    assert nonzero(report["filtered"]) == {"tie": 1}


def test_drop_threshold_stops_with_one_line(root, tokenizer, monkeypatch, capsys):
    monkeypatch.chdir(FIXTURES.parent.parent)
    with pytest.raises(ConfigError) as err:
        load_preference_data(typed(config(root, "shp")), tokenizer)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("data=shp: 3 of 9 pairs dropped (33.3% > data.max_drop_fraction=0.05)")
    assert "missing_field 1, empty 1, identical 1" in message
    assert "dropped 3 (33.3%, limit 5.0%)" in capsys.readouterr().out  # the report is printed first
    data = load_preference_data(typed(config(root, "shp", "data.max_drop_fraction=0.34")), tokenizer)
    assert (len(data.train_pairs), len(data.test_pairs), len(data.eval_prompts)) == (4, 2, 2)
    assert data.report["drop_fraction"] == pytest.approx(3 / 9)
    assert set(data.train_pairs.column_names) == {"prompt", "chosen", "rejected"}
    assert set(data.sft.column_names) == {"prompt", "completion"}


def test_nothing_left_is_an_error_too(root, tokenizer, monkeypatch):
    monkeypatch.chdir(FIXTURES.parent.parent)
    cfg = config(root, "custom", "data.source=tests/fixtures/custom/ranked.jsonl", "data.columns.responses=responses",
                 "data.columns.scores=scores", "data.ranking.min_margin=100")
    with pytest.raises(ConfigError, match="0 train and 0 test pairs left after validation"):
        load_preference_data(typed(cfg), tokenizer)


def test_synthetic_report_shows_no_drops_and_keeps_the_generated_rows(root, tokenizer):
    from helpers.chat import to_conversational
    from train.data import synthetic

    cfg = config(root, "synthetic", "debug=fast")
    data = load_preference_data(typed(cfg), tokenizer)
    assert sum(data.report["dropped"].values()) == 0
    assert data.report["pairs"] == {"train": 512, "test": 32} and data.report["sft"]["rows"] == 512
    expected = [to_conversational(r) for r in synthetic.make_preference_rows(512, cfg.seed, "train")]
    assert data.train_pairs.to_list() == expected  # same rows, same order as the generator's
    assert data.sft.to_list() == [to_conversational(r) for r in synthetic.make_sft_rows(512, cfg.seed)]
    assert len(data.eval_prompts) == 32


def test_token_ids_match_trl_tokenization(tokenizer):
    """Our length checks tokenize as TRL 1.16's DPOTrainer does; this fails if TRL changes how."""
    from trl.data_utils import _tokenize

    from train.data.validation import token_ids

    chats = [[{"role": "user", "content": "write a review of the comedy"}],
             [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "zebra?"}]]
    answers = [[{"role": "assistant", "content": "a great film"}], [{"role": "assistant", "content": "ünïcode ok"}]]
    prompt_ids, (full,) = token_ids(tokenizer, chats, [answers], True, tokenizer.eos_token)
    for i in range(2):
        assert prompt_ids[i] == _tokenize(tokenizer, chats[i], add_generation_prompt=True)["input_ids"]
        assert full[i] == _tokenize(tokenizer, chats[i] + answers[i])["input_ids"]
    texts, responses = ["Human: hi\n\nAssistant:", "plain prompt"], [" a great film", " zebra"]
    prompt_ids, (full,) = token_ids(tokenizer, texts, [responses], False, tokenizer.eos_token)
    for i in range(2):
        assert prompt_ids[i] == _tokenize(tokenizer, texts[i])["input_ids"]
        assert full[i] == _tokenize(tokenizer, texts[i] + responses[i] + tokenizer.eos_token)["input_ids"]


def test_length_outcomes():
    from train.data.validation import DropReason, Fix, length_outcomes

    prompt = [1, 2, 3]
    assert length_outcomes(prompt, [prompt + [4], prompt + [5]], 3, "keep_start")[0].reason == "prompt_too_long"
    assert length_outcomes(prompt, [prompt + [4, 4, 9], prompt + [4, 4, 8]], 5, "keep_start")[0].reason == "response_truncated_away"
    assert length_outcomes(prompt, [prompt + [4, 9, 9], prompt + [5]], 5, "keep_start") == [Fix("response_truncated", "> 5 tokens")]
    assert length_outcomes(prompt, [prompt + [4], prompt + [5]], 5, "keep_start") == []
    assert length_outcomes(prompt, [prompt + [4, 4, 9], prompt + [4, 4, 8]], 5, "keep_end") == [Fix("response_truncated", "> 5 tokens")]
    assert length_outcomes(prompt, [prompt + [4]], None, "keep_start") == []
    # a chat template that renders the prompt differently alone: the completion starts where they diverge (as in TRL)
    assert length_outcomes([1, 2, 3, 7], [[1, 2, 3, 4], [1, 2, 3, 5]], 4, "keep_start") == []
    assert isinstance(length_outcomes(prompt, [prompt + [4]], 3, "keep_start")[0], DropReason)


def test_preparation_runs_once_and_is_reused(root, tokenizer, monkeypatch):
    """Ranks of one job (and later runs) share the prepared files: the first builds under a file lock,
    the others wait and read them back."""
    import train.data.preference as preference  # calls build() by the name it imported

    monkeypatch.chdir(FIXTURES.parent.parent)
    real_build, calls = preference.build, []

    def counting_build(*args, **kwargs):
        calls.append(1)
        threading.Event().wait(0.3)  # long enough for the other thread to reach the lock
        return real_build(*args, **kwargs)

    monkeypatch.setattr(preference, "build", counting_build)
    cfg = config(root, "hc3", "data.source=tests/fixtures/hc3/all.jsonl", "seed=7")
    results = []
    threads = [threading.Thread(target=lambda: results.append(prepare(typed(cfg), tokenizer))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results[0] == results[1]
    prepare(typed(config(root, "hc3", "data.source=tests/fixtures/hc3/all.jsonl", "seed=8")), tokenizer)
    assert len(calls) == 2  # another seed is another held-out slice


def test_file_formats(root, tokenizer, monkeypatch, tmp_path):
    import datasets

    monkeypatch.chdir(FIXTURES.parent.parent)
    datasets.load_dataset("json", data_files=str(FIXTURES / "shp/train.jsonl"), split="train").to_parquet(str(tmp_path / "train-00000-of-00001.parquet"))
    datasets.load_dataset("json", data_files=str(FIXTURES / "shp/test.jsonl"), split="train").to_parquet(str(tmp_path / "test-00000-of-00001.parquet"))
    _, report = prepare(typed(config(root, "shp", f"data.source={tmp_path}")), tokenizer)
    assert report["pairs"] == {"train": 4, "test": 2} and report["test_split"] == "test"
    _, report = prepare(typed(config(root, "custom", "data.source=tests/fixtures/custom/pairs.csv")), tokenizer)
    assert report["rows"]["train"] == 8 and nonzero(report["dropped"]) == {"missing_field": 1}  # an empty CSV cell reads as null
    _, report = prepare(typed(config(root, "shp", "data.source=tests/fixtures/shp/train.jsonl", "data.max_rows=3")), tokenizer)
    assert report["rows"]["train"] == 3 and report["test_split"].startswith("held out")


@pytest.mark.parametrize("overrides,message", [
    (["data=custom", "data.source=tests/fixtures/custom"], "data.source=tests/fixtures/custom: mixes file formats (csv, json)"),
    (["data=custom", "data.source=tests/fixtures/nothing.jsonl"], "data.source=tests/fixtures/nothing.jsonl: no such file or directory"),
    (["data=custom"], "data.source is required by data=custom"),
    (["data=hc3", "+data.options.prefr=human"], "data.options.prefr: not an option of data=hc3; did you mean data.options.prefer?"),
    (["data=hc3", "data.options.prefer=robots"], "data.options.prefer=robots: choose one of human, chatgpt"),
    (["data=webgpt_comparisons", "data.ranking.strategy=all_pairs"], "data.ranking: data=webgpt_comparisons does not read it"),
    (["data=eli5", "data.ranking.strategy=best"], "data.ranking.strategy=best: choose one of best_vs_worst"),
    (["data=custom", "data.source=tests/fixtures/custom/ranked.jsonl", "data.columns.responses=responses"],
     "data.columns.responses and data.columns.scores go together"),
    (["data=shp", "data.source=tests/fixtures/shp", "data.train_split=training"], "data.train_split=training: the source has splits test, train"),
])
def test_config_errors_are_one_line(overrides, message, root, tokenizer, monkeypatch):
    monkeypatch.chdir(FIXTURES.parent.parent)
    name = overrides[0].removeprefix("data=")
    source = [] if any(o.startswith("data.source=") for o in overrides) or name == "custom" else [f"data.source=tests/fixtures/{name}"]
    with pytest.raises(ConfigError) as err:  # at composition (an Enum value) or when the data loads
        load_preference_data(typed(compose([f"output_root={root}", *source, *overrides])), tokenizer)
    assert message in str(err.value) and "\n" not in str(err.value)
