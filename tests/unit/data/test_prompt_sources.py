"""Prompt sources of on-policy rounds (train/data/prompts.py): real files of every format, a real SQLite database,
templates, the mix, duplicates across sources, determinism, and one line for each bad input."""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

import datasets
import pytest
import yaml
from omegaconf import OmegaConf

from train.config.onpolicy_schema import PromptsSpec
from train.core.errors import ConfigError
from train.data.prompts import format_report, select_prompts

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Review a lamp."}]


def spec(**settings) -> dict:
    return {"data": False, **settings}


def make_db(path: Path, texts: list) -> Path:
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE prompts (id INTEGER PRIMARY KEY, text TEXT, topic TEXT)")
        con.executemany("INSERT INTO prompts (text, topic) VALUES (?, ?)", [(t, "misc") for t in texts])
    con.close()
    return path


def test_every_file_format_reads_text_and_chat_prompts(tmp_path):
    (tmp_path / "a.txt").write_text("Review a chair.\n\n  Review a desk.  \n")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in
                                                ["Review a pen.", CHAT, {"prompt": "Review a cup."}]) + "\n")
    (tmp_path / "c.json").write_text(json.dumps([{"prompt": "Review a mug."}, {"prompt": CHAT[1:]}]))
    datasets.Dataset.from_list([{"prompt": "Review a bag."}, {"prompt": "Review a hat."}]).to_csv(tmp_path / "d.csv")
    sock = [{"role": "user", "content": "Review a sock."}]
    datasets.Dataset.from_list([{"prompt": CHAT}, {"prompt": sock}]).to_parquet(tmp_path / "e.parquet")
    with gzip.open(tmp_path / "f.jsonl.gz", "wt") as f:
        f.write(json.dumps({"prompt": "Review a shoe."}) + "\n")
    files = [str(tmp_path / n) for n in ("a.txt", "b.jsonl", "c.json", "d.csv", "e.parquet", "f.jsonl.gz")]
    prompts, report = select_prompts(spec(files=files), [], seed=0)
    assert prompts == ["Review a chair.", "Review a desk.", "Review a pen.", CHAT, "Review a cup.", "Review a mug.",
                       CHAT[1:], "Review a bag.", "Review a hat.", sock, "Review a shoe."]
    # The parquet file's chat prompt repeats b.jsonl's: read, counted as a duplicate, taken once.
    assert report["files"] == {"available": 12, "duplicates": 1, "taken": 11,
                               "notes": [f"{tmp_path / 'a.txt'}: 1 blank rows skipped"]}


def test_a_configured_column_holds_the_prompt(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"id": 1, "question": "Why?"}\n{"id": 2, "question": "How?"}\n')
    prompts, _ = select_prompts(spec(files=[str(tmp_path / "p.jsonl")], column="question"), [], seed=0)
    assert prompts == ["Why?", "How?"]


def test_templates_fill_distinct_combinations_and_say_when_count_exceeds_them():
    template = {"template": "Write a {tone} review of {product}", "values": {"tone": ["warm", "harsh"],
                                                                             "product": ["lamp", "desk", "pen"]}}
    prompts, report = select_prompts(spec(templates={**template, "count": 4}), [], seed=0)
    assert len(prompts) == len(set(prompts)) == 4
    assert all(p.startswith("Write a ") and p.split()[2] in ("warm", "harsh") for p in prompts)
    prompts, report = select_prompts(spec(templates={**template, "count": 50}), [], seed=0)
    assert sorted(prompts) == sorted(f"Write a {t} review of {p}" for t in ("warm", "harsh")
                                     for p in ("lamp", "desk", "pen"))
    assert report["templates"]["notes"] == ["count=50 but only 6 distinct combinations: 6 prompts"]


def test_template_values_can_come_from_a_table_file(tmp_path):
    (tmp_path / "values.csv").write_text("tone,product\nwarm,lamp\nharsh,desk\n,pen\n")
    templates = {"template": "A {tone} {product} review. {{json}}", "values_file": str(tmp_path / "values.csv")}
    prompts, _ = select_prompts(spec(templates=templates), [], seed=0)
    assert len(prompts) == 6 and "A harsh pen review. {json}" in prompts


def test_sql_samples_rows_of_a_real_sqlite_file(tmp_path):
    db = make_db(tmp_path / "prompts.db", [f"Review item {i}." for i in range(20)])
    sql = {"url": str(db), "query": "SELECT text FROM prompts", "count": 5}
    prompts, report = select_prompts(spec(sql=sql), [], seed=0)
    assert len(set(prompts)) == 5 and all(p.startswith("Review item ") for p in prompts)
    assert report["sql"] == {"available": 5, "duplicates": 0, "taken": 5, "notes": []}
    assert select_prompts(spec(sql=sql), [], seed=1)[0] != prompts  # another seed, another sample
    # A SQLAlchemy URL reads the same rows; a named column of several.
    both = {"url": f"sqlite:///{db}", "query": "SELECT topic, text FROM prompts", "column": "text", "count": 5}
    assert select_prompts(spec(sql=both), [], seed=0)[0] == prompts


def test_the_database_change_is_seen_on_the_next_read(tmp_path):
    """datasets caches from_sql by query and connection; a table that changed must not come back stale."""
    db = make_db(tmp_path / "prompts.db", ["first"])
    sql = {"url": str(db), "query": "SELECT text FROM prompts"}
    assert select_prompts(spec(sql=sql), [], seed=0)[0] == ["first"]
    with sqlite3.connect(db) as con:
        con.execute("UPDATE prompts SET text = 'second'")
    con.close()
    assert select_prompts(spec(sql=sql), [], seed=0)[0] == ["second"]


def sources(tmp_path: Path) -> tuple[dict, list]:
    """Four sources of 20 prompts each, the data's and the file's sharing 5."""
    data = [f"data prompt {i}" for i in range(20)]
    (tmp_path / "p.txt").write_text("\n".join([f"file prompt {i}" for i in range(15)] + data[:5]) + "\n")
    db = make_db(tmp_path / "p.db", [f"sql prompt {i}" for i in range(20)])
    settings = {"files": [str(tmp_path / "p.txt")],
                "templates": {"template": "t {a} {b}", "values": {"a": list("abcde"), "b": list("wxyz")}},
                "sql": {"url": str(db), "query": "SELECT text FROM prompts"}}
    return settings, data


def test_mix_takes_stated_proportions_of_max_prompts(tmp_path):
    settings, data = sources(tmp_path)
    mix = {"data": 0.5, "files": 0.2, "templates": 0.1, "sql": 0.2}
    prompts, report = select_prompts({**settings, "mix": mix, "max_prompts": 30}, data, seed=0)
    assert {s: report[s]["taken"] for s in mix} == {"data": 15, "files": 6, "templates": 3, "sql": 6}
    assert len(prompts) == len({json.dumps(p) for p in prompts}) == 30 == report["total"]["taken"]
    # Largest remainder: 7 * (0.5, 0.2, 0.1, 0.2) = 3.5, 1.4, 0.7, 1.4 -> 3, 1, 0, 1 and the two largest
    # remainders (data 0.5, templates 0.7) get one more: the shares add up to max_prompts.
    _, report = select_prompts({**settings, "mix": mix, "max_prompts": 7}, data, seed=0)
    assert {s: report[s]["share"] for s in mix} == {"data": 4, "files": 1, "templates": 1, "sql": 1}


def test_a_source_short_of_its_share_says_so_and_duplicates_count_across_sources(tmp_path):
    settings, data = sources(tmp_path)
    prompts, report = select_prompts({**settings, "mix": {"data": 0.1, "files": 0.9}, "max_prompts": 20}, data, 0)
    # The file's 5 copies of data prompts are duplicates: 15 of its 18-prompt share remain.
    assert report["files"] == {"available": 20, "duplicates": 5, "taken": 15, "share": 18,
                               "notes": ["fewer prompts than its share: 15 of 18 (5 duplicates left out)"]}
    assert report["templates"]["taken"] == 0 and report["templates"]["notes"] == ["not in prompts.mix: none taken"]
    assert len(prompts) == 17 and report["total"]["notes"] == ["fewer than max_prompts=20"]
    assert any(line.startswith("prompts: files: 15 taken (share 18) of 20 available") for line in format_report(report))


def test_chat_prompts_dedup_by_their_messages():
    prompts, report = select_prompts({"data": True}, [CHAT, "hi", [dict(m) for m in CHAT], CHAT[1:]], seed=0)
    assert prompts == [CHAT, "hi", CHAT[1:]] and report["data"]["duplicates"] == 1


def test_selection_is_deterministic_for_a_seed(tmp_path):
    settings, data = sources(tmp_path)
    for extra in ({"mix": {"data": 1, "sql": 1, "templates": 1}, "max_prompts": 12}, {"max_prompts": 12}):
        first = select_prompts({**settings, **extra}, data, seed=3)
        assert select_prompts({**settings, **extra}, data, seed=3) == first
        assert select_prompts({**settings, **extra}, data, seed=4)[0] != first[0]
    everything, report = select_prompts(settings, data, seed=0)  # no mix, no max: every distinct prompt
    assert len(everything) == 20 + 15 + 20 + 20 == report["total"]["taken"]


def test_the_spec_composes_from_yaml_as_documented():
    text = """
data: true
files: [prompts.jsonl]
templates: {template: "Write a {tone} review of {product}", values: {tone: [warm], product: [lamp]}, count: 10}
sql: {url: prompts.db, query: "SELECT text FROM prompts", column: text, count: 100}
mix: {data: 0.5, files: 0.2, templates: 0.1, sql: 0.2}
max_prompts: 200
"""
    cfg = OmegaConf.merge(OmegaConf.structured(PromptsSpec), yaml.safe_load(text))
    assert cfg.mix.sql == 0.2 and cfg.templates["values"].tone == ["warm"]
    with pytest.raises(ConfigError, match="mixx"):
        select_prompts({"mixx": {}}, ["a"], seed=0)


@pytest.mark.parametrize("settings,message", [
    (spec(files=["{tmp}/empty.txt"]), r"^prompts.files: .*/empty.txt holds no prompts; give a file with prompts"),
    (spec(files=["{tmp}/nope.jsonl"]), r"^prompts.files: .*/nope.jsonl: no such file$"),
    (spec(files=["{tmp}/bad.jsonl"]), r"^prompts.files: .*/bad.jsonl:2 is not JSON"),
    (spec(files=["{tmp}/rows.jsonl"], column="text"), r"^prompts.column=text: .*/rows.jsonl row 1 has no such field"),
    (spec(templates={"template": "A {tone} {thing}", "values": {"tone": ["warm"]}}),
     r"^prompts.templates.template has \{thing\} but prompts.templates.values has no thing"),
    (spec(templates={"template": "A {tone}", "values": {"tone": []}}), r"^prompts.templates.values.tone: no values"),
    (spec(sql={"url": "{tmp}/p.db", "query": "SELEC text FROM prompts"}),
     r"^prompts.sql.query could not run on prompts.sql.url=.*p.db \(.*syntax error"),
    (spec(sql={"url": "{tmp}/p.db", "query": "SELECT text FROM missing"}), r"no such table: missing"),
    (spec(sql={"url": "{tmp}/absent.db", "query": "SELECT 1"}), r"^prompts.sql.url=.*absent.db: no such SQLite file$"),
    (spec(sql={"url": "postgresql://nobody@127.0.0.1:9/none", "query": "SELECT 1"}),
     r"^prompts.sql.query could not run on prompts.sql.url=postgresql://"),
    (spec(sql={"url": "{tmp}/p.db", "query": "SELECT text FROM prompts WHERE id < 0"}),
     r"^prompts.sql.query returned no rows from"),
    (spec(sql={"url": "{tmp}/p.db", "query": "SELECT text FROM prompts", "column": "body"}),
     r"^prompts.sql.column=body: not in the query's result \(its columns: text\)"),
    (spec(), r"^prompts: no prompt source; set prompts.data=true"),
    ({"data": True}, r"^prompts.data=true but the data gives no prompts; set prompts.data=false"),
    (spec(files=["{tmp}/rows.jsonl"], mix={"sql": 1.0}, max_prompts=4),
     r"^prompts.mix.sql=1.0 but prompts.sql gives no prompts"),
    (spec(files=["{tmp}/rows.jsonl"], mix={"files": 1.0}), r"^prompts.mix needs prompts.max_prompts"),
])
def test_each_bad_input_is_one_line_naming_the_setting(tmp_path, settings, message):
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"prompt": \n')
    (tmp_path / "rows.jsonl").write_text('{"prompt": "ok"}\n')
    make_db(tmp_path / "p.db", ["a prompt"])
    settings = json.loads(json.dumps(settings).replace("{tmp}", str(tmp_path)))
    with pytest.raises(ConfigError, match=message) as err:
        select_prompts(settings, [], seed=0)
    assert "\n" not in str(err.value)
