"""Converters on toy native rows (pure functions): one row in, canonical pairs or a DropReason out.
Also the presentation to TRL's formats, the held-out slice and local split naming."""

from pathlib import Path

import pytest

from train.data import chat, converters, custom
from train.data.build import hold_out
from train.data.loading import split_name
from train.data.rows import present, render_plain
from train.data.validation import DropReason, Fix, check_pair

RANKING = {"ranking": {"strategy": "best_vs_worst", "min_margin": 0.0}}
USER = lambda text: {"role": "user", "content": text}  # noqa: E731
BOT = lambda text: {"role": "assistant", "content": text}  # noqa: E731


def one(result):
    assert isinstance(result, list) and len(result) == 1, result
    return result[0]


# ---- webgpt_comparisons ----
def webgpt(q="Why?", a0="Because.", a1="No idea.", s0=1.0, s1=-1.0):
    return {"question": {"dataset": "eli5", "id": "x", "full_text": q}, "answer_0": a0, "answer_1": a1,
            "score_0": s0, "score_1": s1, "quotes_0": {"title": [], "extract": []}}


def test_webgpt_higher_score_is_chosen_and_citations_go():
    opts = {"strip_citations": True}
    assert one(converters.convert_webgpt(webgpt(), opts)) == {"prompt": "Why?", "chosen": "Because.", "rejected": "No idea."}
    pair = one(converters.convert_webgpt(webgpt(a0="Yes [1].", a1="It is [2, 3] so.", s0=-0.5, s1=0.5), opts))
    assert (pair["chosen"], pair["rejected"]) == ("It is so.", "Yes.")
    kept = one(converters.convert_webgpt(webgpt(a0="Yes [1].", s0=1, s1=0), {"strip_citations": False}))
    assert kept["chosen"] == "Yes [1]."


@pytest.mark.parametrize("row,reason", [
    (webgpt(s0=0.0, s1=0.0), DropReason("tie", "score_0 == score_1")),
    (webgpt(q=None), DropReason("missing_field", "question.full_text")),
    ({**webgpt(), "question": None}, DropReason("missing_field", "question.full_text")),
    (webgpt(a1=""), DropReason("empty", "answer_1")),
    (webgpt(a0=42), DropReason("not_a_string", "answer_0")),
    (webgpt(a0="[1]"), DropReason("empty", "answer_0 (citations removed)")),
])
def test_webgpt_drops(row, reason):
    assert converters.convert_webgpt(row, {"strip_citations": True}) == reason


# ---- summarize_from_feedback ----
def tldr(post="My post.", choice=1, texts=(" first", " second"), article=None):
    return {"info": {"id": "t3_1", "post": post, "title": "Title", "subreddit": "sub", "site": None, "article": article},
            "summaries": [{"text": t, "policy": "p", "note": None} for t in texts], "choice": choice}


def test_summarize_prompt_and_choice():
    pair = one(converters.convert_summarize(tldr(), {}))
    assert pair["prompt"] == "SUBREDDIT: r/sub\n\nTITLE: Title\n\nPOST: My post.\n\nTL;DR:"
    assert (pair["chosen"], pair["rejected"]) == ("second", "first")
    article = one(converters.convert_summarize({**tldr(post=None, article="News text."), "info": {
        "post": None, "article": "News text.", "title": "Storm", "subreddit": None}}, {}))
    assert article["prompt"] == "TITLE: Storm\n\nARTICLE: News text.\n\nTL;DR:"


@pytest.mark.parametrize("row,reason", [
    (tldr(choice=None), "missing_field"),
    (tldr(choice=2), "malformed"),
    (tldr(texts=("a", "b", "c")), "malformed"),
    (tldr(post=None), "missing_field"),
    (tldr(texts=(" ", "b")), "empty"),
])
def test_summarize_drops(row, reason):
    assert converters.convert_summarize(row, {}).reason == reason


# ---- eli5 ----
def eli5(texts, scores, selftext=""):
    return {"q_id": "1", "title": "ELI5: why?", "selftext": selftext,
            "answers": {"a_id": [str(i) for i in range(len(texts))], "text": texts, "score": scores}}


def test_eli5_ranks_answers_and_fixes_empty_ones():
    assert converters.convert_eli5(eli5(["good", "bad", "ok"], [9, 1, 5]), RANKING) == [
        {"prompt": "ELI5: why?", "chosen": "good", "rejected": "bad"}]
    result = converters.convert_eli5(eli5(["good", "", "bad"], [9, 5, 1], selftext="Details."), RANKING)
    assert result == [{"prompt": "ELI5: why?\n\nDetails.", "chosen": "good", "rejected": "bad"},
                      Fix("empty", "answers.text[1]")]
    as_objects = {"title": "ELI5: why?", "answers": [{"text": "good", "score": 2}, {"text": "bad", "score": 1}]}
    assert one(converters.convert_eli5(as_objects, RANKING))["chosen"] == "good"
    all_pairs = converters.convert_eli5(eli5(["a", "b", "c"], [3, 2, 1]), {"ranking": {"strategy": "all_pairs", "min_margin": 0}})
    assert len(all_pairs) == 3


@pytest.mark.parametrize("texts,scores,reason", [
    (["a", "b"], [2, 2], "tie"),
    (["a"], [2], "single_response"),
    (["a", ""], [2, 1], "empty"),
    (["a", "b", "c"], [3, 2.5, 2], "below_margin"),
])
def test_eli5_drops(texts, scores, reason):
    result = converters.convert_eli5(eli5(texts, scores), {"ranking": {"strategy": "best_vs_worst", "min_margin": 2}})
    assert isinstance(result, DropReason) and result.reason == reason


# ---- hc3 ----
def hc3(human, gpt):
    return {"id": "0", "question": "What?", "human_answers": human, "chatgpt_answers": gpt, "source": "open_qa"}


def test_hc3_zips_answers_and_prefers_the_configured_side():
    pairs = converters.convert_hc3(hc3(["h1", "h2"], ["g1"]), {"prefer": "human"})
    assert pairs == [{"prompt": "What?", "chosen": "h1", "rejected": "g1"}]  # zip: h2 has no partner
    flipped = one(converters.convert_hc3(hc3(["h1"], ["g1"]), {"prefer": "chatgpt"}))
    assert (flipped["chosen"], flipped["rejected"]) == ("g1", "h1")
    mixed = converters.convert_hc3(hc3(["h1", ""], ["g1", "g2"]), {"prefer": "human"})
    assert mixed[1] == DropReason("empty", "human_answers[1]") and len(mixed) == 2
    assert converters.convert_hc3(hc3(["h1"], []), {"prefer": "human"}) == DropReason("empty", "chatgpt_answers")


# ---- shp ----
def shp(labels=1, ratio=3.0, a="A says", b="B says"):
    return {"history": "Post?", "human_ref_A": a, "human_ref_B": b, "labels": labels, "score_A": 30, "score_B": 10,
            "score_ratio": ratio}


def test_shp_labels_and_score_ratio():
    assert one(converters.convert_shp(shp(), {"min_score_ratio": None}))["chosen"] == "A says"
    assert one(converters.convert_shp(shp(labels=0), {"min_score_ratio": None}))["chosen"] == "B says"
    assert converters.convert_shp(shp(ratio=1.5), {"min_score_ratio": 2.0}).reason == "below_score_ratio"
    assert converters.convert_shp(shp(labels=None), {"min_score_ratio": None}).reason == "missing_field"
    assert converters.convert_shp(shp(b=""), {"min_score_ratio": None}).reason == "empty"


# ---- hh_rlhf ----
def test_hh_rlhf_splits_the_shared_dialogue_into_prompt_and_final_turns():
    head = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: a joke?"
    row = {"chosen": head + "\n\nAssistant: Why did the chicken...", "rejected": head + "\n\nAssistant: No."}
    pair = one(chat.convert_hh_rlhf(row, {}))
    assert pair == {"prompt": [USER("hi"), BOT("hello"), USER("a joke?")], "chosen": "Why did the chicken...", "rejected": "No."}
    # responses that start alike still split at the last shared "Assistant:", not mid-answer
    alike = one(chat.convert_hh_rlhf({"chosen": "\n\nHuman: q\n\nAssistant: I think yes", "rejected": "\n\nHuman: q\n\nAssistant: I think no"}, {}))
    assert (alike["chosen"], alike["rejected"]) == ("I think yes", "I think no")
    no_blank_line = one(chat.convert_hh_rlhf({"chosen": "Human: q\n\nAssistant: a", "rejected": "Human: q\n\nAssistant: b"}, {}))
    assert no_blank_line["prompt"] == [USER("q")]


@pytest.mark.parametrize("row,reason", [
    ({"chosen": "plain text", "rejected": "other"}, "malformed"),
    ({"chosen": "\n\nHuman: q\n\nAssistant: a\n\nHuman: more\n\nAssistant: b", "rejected": "\n\nHuman: q\n\nAssistant: c"}, "malformed"),
    ({"chosen": "\n\nHuman: q\n\nAssistant:", "rejected": "\n\nHuman: q\n\nAssistant: c"}, "empty"),
    ({"chosen": 3, "rejected": "\n\nHuman: q\n\nAssistant: c"}, "not_a_string"),
    ({"rejected": "\n\nHuman: q\n\nAssistant: c"}, "missing_field"),
])
def test_hh_rlhf_drops(row, reason):
    assert chat.convert_hh_rlhf(row, {}).reason == reason


# ---- ultrafeedback_binarized ----
def uf(history, good, bad, sc=9.0, sr=3.0, rejected_history=None):
    return {"prompt": history[0]["content"], "chosen": history + [BOT(good)],
            "rejected": (rejected_history or history) + [BOT(bad)], "score_chosen": sc, "score_rejected": sr}


def test_ultrafeedback_keeps_multi_turn_history():
    history = [USER("Translate hi"), BOT("Salut"), USER("In German?")]
    pair = one(chat.convert_ultrafeedback(uf(history, "Hallo", "Hola"), {}))
    assert pair == {"prompt": history, "chosen": "Hallo", "rejected": "Hola"}
    assert chat.convert_ultrafeedback(uf(history, "a", "b", sc=5, sr=5), {}).reason == "tie"
    assert chat.convert_ultrafeedback(uf(history, "a", "", sc=5, sr=1), {}).reason == "empty"
    differ = uf([USER("x")], "a", "b", rejected_history=[USER("y")])
    assert chat.convert_ultrafeedback(differ, {}).reason == "malformed"
    sft = one(chat.convert_ultrafeedback_sft({"messages": history + [BOT("Hallo")]}, {}))
    assert sft == {"prompt": history, "completion": "Hallo"}
    assert chat.convert_ultrafeedback_sft({"messages": [USER("x")]}, {}).reason == "malformed"


# ---- custom ----
def test_custom_columns_and_ranked_lists():
    cols = {"prompt": "q.text", "chosen": "good", "rejected": "bad", "responses": None, "scores": None}
    row = {"q": {"text": "Q?"}, "good": "yes", "bad": [BOT("no")]}
    assert one(custom.convert_custom(row, {"columns": cols})) == {"prompt": "Q?", "chosen": "yes", "rejected": "no"}
    chat_prompt = {"q": {"text": [USER("Q?")]}, "good": "yes", "bad": "no"}
    assert one(custom.convert_custom(chat_prompt, {"columns": cols}))["prompt"] == [USER("Q?")]
    ranked_cols = {**cols, "prompt": "prompt", "responses": "answers", "scores": "votes"}
    ranked = custom.convert_custom({"prompt": "P", "answers": ["x", "y", "z"], "votes": [1, 3, 2]},
                                       {"columns": ranked_cols, **RANKING})
    assert ranked == [{"prompt": "P", "chosen": "y", "rejected": "x"}]
    assert custom.convert_custom({"prompt": "P", "good": "a"}, {"columns": {**cols, "prompt": "prompt"}}).reason == "missing_field"
    bad_score = custom.convert_custom({"prompt": "P", "answers": ["x", "y", "z"], "votes": [1, "high", 2]},
                                          {"columns": ranked_cols, **RANKING})
    assert bad_score[-1] == Fix("malformed", "score of answers[1]")


# ---- shared checks and presentation ----
def test_check_pair():
    assert check_pair({"prompt": "p", "chosen": "a", "rejected": "a "}) == DropReason("identical", "chosen")
    assert check_pair({"prompt": " ", "chosen": "a", "rejected": "b"}).reason == "empty"
    assert check_pair({"prompt": [USER("")], "chosen": "a", "rejected": "b"}).reason == "empty"
    assert check_pair({"prompt": "p", "chosen": "a", "rejected": "b"}) is None


def test_present_conversational_and_plain():
    single = {"prompt": "Q?", "chosen": "yes", "rejected": "no"}
    assert present(single, True) == {"prompt": [USER("Q?")], "chosen": [BOT("yes")], "rejected": [BOT("no")]}
    assert present(single, False) == {"prompt": "Q?", "chosen": " yes", "rejected": " no"}
    multi = {"prompt": [USER("hi"), BOT("hello"), USER("joke?")], "completion": "ha"}
    assert present(multi, True) == {"prompt": multi["prompt"], "completion": [BOT("ha")]}
    assert present(multi, False) == {"prompt": "Human: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant:", "completion": " ha"}
    assert render_plain([{"role": "system", "content": "Be brief."}, USER("q")]) == "System: Be brief.\n\nHuman: q\n\nAssistant:"


def test_hold_out_keeps_a_prompts_pairs_together_and_is_seeded():
    pairs = [{"prompt": f"p{i % 10}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(40)]
    train, test = hold_out(pairs, 0.2, seed=0)
    assert len(train) + len(test) == 40
    assert {p["prompt"] for p in train}.isdisjoint({p["prompt"] for p in test})
    assert len({p["prompt"] for p in test}) == 2
    assert hold_out(pairs, 0.2, seed=0) == (train, test)
    assert hold_out(pairs, 0.2, seed=1) != (train, test)
    assert len(hold_out(pairs[:2], 0.01, seed=0)[1]) == 1  # at least one prompt when there are two
    assert hold_out(pairs[:1], 0.5, seed=0)[1] == []


@pytest.mark.parametrize("name,split", [
    ("train.jsonl", "train"), ("test-00000-of-00001.parquet", "test"), ("train_prefs-00001-of-00003.parquet", "train_prefs"),
    ("helpful-base/train.jsonl.gz", "train"), ("validation.csv", "validation"), ("all.jsonl", "all"),
])
def test_split_names_of_local_files(name, split):
    assert split_name(Path(name)) == split
