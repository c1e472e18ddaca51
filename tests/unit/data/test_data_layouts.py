"""data=custom files laid out as users bring them: two responses and a label naming the preferred one, TRL's
implicit-prompt conversations, columns that do not match (all named in one error), and a file with a few
unparsable lines (dropped and counted, not the whole file refused)."""

import csv
import gzip
import json
import subprocess
import sys

import pytest

from helpers.runs import REPO
from train.config.compose import compose
from train.core.errors import ConfigError
from train.data import load_preference_data, prepare
from train.data.custom import convert_custom, detect_base, preferred_index
from helpers.typed import typed

LABEL_COLUMNS = ["data.columns.prompt=question", "data.columns.responses=[response_a,response_b]",
                 "data.columns.preferred=preferred"]
QUESTIONS = [("what is two plus two", "four", "five"), ("name a colour", "green", "seven"),
             ("capital of france", "paris", "berlin"), ("spell cat", "cat", "kat"), ("best pet", "cats", "dogs"),
             ("is ice cold", "yes", "no"), ("a prime", "seven", "eight"), ("sky colour", "blue", "green")]


def run_prepare(tmp_path, source, *overrides):
    cfg = compose(["data=custom", f"data.source={source}", f"output_root={tmp_path / 'outputs'}", "data.test_split=null",
                   "data.test_fraction=0.01", *overrides])
    files, report = prepare(typed(cfg))
    pairs = [json.loads(line) for name in ("train_pairs", "test_pairs") for line in open(files[name])]
    return {p["prompt"][-1]["content"]: (p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs}, report


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def nonzero(counts):
    return {k: v for k, v in counts.items() if v}


# ---- two responses and a label ----
def test_letter_and_column_name_labels_pick_the_preferred_response(tmp_path):
    # The preferred answer sits in response_a for even rows and in response_b for odd ones, so a mapping of
    # chosen/rejected to the two columns would be wrong for half of them.
    labels = ["a", "B", "response_a", "response_b", "A", "b", "tie", ""]
    rows = [(q, good, bad, lab) if i % 2 == 0 else (q, bad, good, lab)
            for i, ((q, good, bad), lab) in enumerate(zip(QUESTIONS, labels))]
    source = write_csv(tmp_path / "labels.csv", ["question", "response_a", "response_b", "preferred"], rows)
    pairs, report = run_prepare(tmp_path, source, *LABEL_COLUMNS, "data.max_drop_fraction=0.5")
    assert pairs == {q: (good, bad) for q, good, bad in QUESTIONS[:6]}
    assert report["filtered"]["tie"] == 1 and nonzero(report["dropped"]) == {"missing_field": 1}  # empty label
    assert report["layout"].startswith("preferred label: preferred picks one of response_a, response_b")


@pytest.mark.parametrize("values,base", [((0, 1), 0), ((1, 2), 1)], ids=["0-based", "1-based"])
def test_index_labels_are_read_0_or_1_based_from_all_values(tmp_path, values, base):
    rows = [{"question": q, "response_a": good if i % 2 == 0 else bad, "response_b": bad if i % 2 == 0 else good,
             "preferred": values[i % 2]} for i, (q, good, bad) in enumerate(QUESTIONS)]
    source = tmp_path / "labels.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs, report = run_prepare(tmp_path, source, *LABEL_COLUMNS)
    assert pairs == {q: (good, bad) for q, good, bad in QUESTIONS}
    assert f"index labels {base}-based" in report["layout"]


def test_a_label_column_of_only_ones_is_refused_until_the_base_is_given(tmp_path):
    rows = [(q, good, bad, 1) for q, bad, good in QUESTIONS]  # response_b preferred, if 1 counts from 0
    source = write_csv(tmp_path / "ones.csv", ["question", "response_a", "response_b", "preferred"], rows)
    with pytest.raises(ConfigError, match=r"index labels \(1\) fit 0-based and 1-based .* data.columns.preferred_base"):
        run_prepare(tmp_path, source, *LABEL_COLUMNS)
    pairs, _ = run_prepare(tmp_path, source, *LABEL_COLUMNS, "data.columns.preferred_base=0")
    assert pairs == {q: (good, bad) for q, good, bad in QUESTIONS}


def test_label_values():
    cols = {"preferred": "label"}
    assert detect_base([(0, 2), ("1", 2), ("a", 2)], cols) == 0 and detect_base([(2.0, 2), (1, 2)], cols) == 1
    assert detect_base([("a", 2), ("response_b", 2)], cols) is None
    with pytest.raises(ConfigError, match="both 0 and"):
        detect_base([(0, 2), (2, 2)], cols)
    listed = ["response_a", "answers.response_b"]
    assert [preferred_index(v, listed, 2, 1, "label") for v in (1, "2", "A", "b", "RESPONSE_B")] == [0, 1, 0, 1, 1]
    assert preferred_index("Tie (bothbad)", listed, 2, 0, "label").reason == "tie"
    assert preferred_index("c", listed, 2, 0, "label").reason == "malformed"
    assert preferred_index(2, listed, 2, 0, "label").reason == "malformed"
    assert preferred_index(True, listed, 2, 0, "label").reason == "malformed"


def test_label_layout_from_the_command_line(tmp_path):
    source = write_csv(tmp_path / "labels.csv", ["question", "response_a", "response_b", "preferred"],
                       [(q, bad, good, "b") for q, good, bad in QUESTIONS])
    out = tmp_path / "pairs.jsonl"
    proc = subprocess.run([sys.executable, "-m", "train.prepare", "data=custom", f"data.source={source}", *LABEL_COLUMNS,
                           f"output_root={tmp_path / 'outputs'}", f"out={out}"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "  layout: preferred label: preferred picks one of response_a, response_b" in proc.stdout
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written and all(p["chosen"][0]["content"] == dict((q, g) for q, g, _ in QUESTIONS)[p["prompt"][0]["content"]]
                           for p in written)


# ---- TRL's implicit prompt ----
def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


@pytest.mark.parametrize("form", ["messages", "hh_text", "plain_text"])
def test_whole_conversations_share_their_prompt(tmp_path, form):
    rows = []
    for q, good, bad in QUESTIONS:
        if form == "messages":
            rows.append({"chosen": [user(q), assistant(good)], "rejected": [user(q), assistant(bad)]})
        elif form == "hh_text":  # the shared first word of both answers stays in the answers
            rows.append({"chosen": f"\n\nHuman: {q}\n\nAssistant: I say {good}", "rejected": f"\n\nHuman: {q}\n\nAssistant: I say {bad}"})
        else:
            rows.append({"chosen": f"{q}? {good}", "rejected": f"{q}? {bad}"})
    source = tmp_path / "conversations.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs, report = run_prepare(tmp_path, source)
    assert report["layout"].startswith("implicit prompt") and nonzero(report["dropped"]) == {}
    if form == "hh_text":
        assert pairs == {q: (f"I say {good}", f"I say {bad}") for q, good, bad in QUESTIONS}
    elif form == "messages":
        assert pairs == {q: (good, bad) for q, good, bad in QUESTIONS}
    else:
        assert pairs == {f"{q}?": (good, bad) for q, good, bad in QUESTIONS}


def test_conversations_that_differ_before_their_last_turn_are_malformed(tmp_path):
    rows = [{"chosen": [user(q), assistant(good)], "rejected": [user(q), assistant(bad)]} for q, good, bad in QUESTIONS]
    rows[0]["rejected"] = [user("another question"), assistant("no")]
    source = tmp_path / "conversations.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, report = run_prepare(tmp_path, source, "data.max_drop_fraction=0.5")
    assert nonzero(report["dropped"]) == {"malformed": 1}


# ---- columns that do not match ----
def test_every_missing_column_is_named_in_one_error(tmp_path):
    source = write_csv(tmp_path / "mine.csv", ["question", "answer_1", "answer_2", "label"], [("q", "x", "y", 1)])
    with pytest.raises(ConfigError) as err:
        run_prepare(tmp_path, source)
    assert str(err.value).startswith(f"data=custom: {source} has no column(s) prompt, chosen, rejected (its columns: "
                                     "question, answer_1, answer_2, label); set data.columns.prompt=<column>, "
                                     "data.columns.chosen=<column>, data.columns.rejected=<column>; or for two responses")
    with pytest.raises(ConfigError, match=r"has no column\(s\) response_a, response_b, preferred \(its columns"):
        run_prepare(tmp_path, source, *LABEL_COLUMNS)


# ---- unparsable lines ----
def broken_jsonl(n_rows, bad_lines):
    lines = [json.dumps({"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"}) for i in range(n_rows)]
    for i in bad_lines:
        lines[i] = lines[i][:-12]  # cut off mid-object, as a crashed writer leaves it
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.jsonl.gz"])
def test_an_unparsable_line_is_dropped_and_counted(tmp_path, name):
    source = tmp_path / name
    text = broken_jsonl(60, [49])
    source.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    pairs, report = run_prepare(tmp_path, source)
    assert len(pairs) == 59 and "question 49" not in pairs and report["rows"]["train"] == 60
    assert nonzero(report["dropped"]) == {"malformed": 1}
    assert report["examples"]["dropped/malformed"] == [f"train {source}:50 unparsable line"]


def test_too_many_unparsable_lines_stop_the_run_in_one_line(tmp_path):
    source = tmp_path / "pairs.jsonl"
    source.write_text(broken_jsonl(60, range(0, 60, 10)))
    cfg = compose(["data=custom", f"data.source={source}", f"output_root={tmp_path / 'outputs'}"])
    with pytest.raises(ConfigError) as err:
        load_preference_data(typed(cfg))
    assert str(err.value) == ("data=custom: 6 of 60 pairs dropped (10.0% > data.max_drop_fraction=0.05): malformed 6; "
                              "fix the source or raise data.max_drop_fraction")


def test_a_csv_row_with_extra_fields_is_dropped_and_counted(tmp_path):
    source = tmp_path / "pairs.csv"
    source.write_text("prompt,chosen,rejected\n" + "".join(
        f"question {i},good {i},bad {i}" + (",extra" if i == 7 else "") + "\n" for i in range(40)))
    pairs, report = run_prepare(tmp_path, source)
    assert len(pairs) == 39 and "question 7" not in pairs and nonzero(report["dropped"]) == {"malformed": 1}


def test_scores_may_sit_in_one_column_per_response():
    columns = {"prompt": "q", "chosen": None, "rejected": None, "responses": ["a", "b", "c"], "scores": ["sa", "sb", "sc"],
               "preferred": None}
    opts = {"columns": columns, "ranking": {"strategy": "best_vs_worst", "min_margin": 0.0}}
    row = {"q": "Q", "a": "x", "b": "y", "c": "z", "sa": 1, "sb": 3, "sc": None}
    pairs = [p for p in convert_custom(row, opts) if isinstance(p, dict)]
    assert pairs == [{"prompt": "Q", "chosen": "y", "rejected": "x"}]  # z has no score: left out, counted as a fix
