"""Labels from people (python -m train.annotate): pure aggregation on a toy export, then the round trip through a
real Label Studio started by launch/annotate/server.sh (marker `annotate`; one server for the module)."""

from __future__ import annotations

import io
import json
import os
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import httpx
import pytest

from helpers import annotate_fixture as fx
from helpers.runs import REPO, free_port, read_results, run_train
from train.annotate import main
from train.config.choices import RankingStrategy
from train.data.annotation_tasks import Scheme, build_task, group_answers, label_config, read_label_config
from train.data.annotations import Partial, aggregate, choice_agreement

USERS = ("a", "b", "c")


def annotate(*argv: str, env: dict | None = None) -> tuple[int, str, str]:
    """`python -m train.annotate ...` in this process: (exit code, stdout, stderr); env None values unset."""
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ), redirect_stdout(out), redirect_stderr(err):
        for key, value in (env or {}).items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        try:
            code = main(list(argv))
        except SystemExit as stop:
            code = stop.code
    return code, out.getvalue(), err.getvalue()


def write_inputs(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    answers, guide = directory / "answers.jsonl", directory / "guidelines.md"
    answers.write_text("".join(json.dumps(row) + "\n" for row in fx.answer_rows()))
    guide.write_text("# Guidelines\nPrefer the answer that is correct, then the one that is helpful.\n")
    return answers, guide


def toy_export(scheme: str) -> list[dict]:
    """The fixture's labels as Label Studio's JSON export holds them (annotator ids 1, 2, 3)."""
    tasks = []
    for number, group in enumerate(group_answers(fx.answer_rows()), 1):
        task = {"id": number, **build_task(group, 3, Scheme(scheme), "toy"), "drafts": []}
        task["annotations"] = [{"completed_by": USERS.index(who) + 1, **fx.result(scheme, said)}
                               for who, said in fx.labels(scheme)[group["prompt_id"]].items()]
        tasks.append(task)
    return tasks


# Pure: toy annotation JSON, no server.

@pytest.mark.parametrize("scheme", ["rating", "best_worst"])
def test_toy_export_gives_the_pairs_worked_out_by_hand(scheme):
    pairs, report = aggregate(toy_export(scheme), Scheme(scheme))
    assert pairs == fx.expected_pairs(scheme)
    counts = report["counts"]
    if scheme == "rating":
        assert report["agreement"]["alpha_interval"] == pytest.approx(fx.ALPHA_INTERVAL, abs=1e-4)
        assert report["agreement"]["alpha_ordinal"] == pytest.approx(fx.ALPHA_ORDINAL, abs=1e-4)
        assert (counts["annotations_used"], counts["annotations_partial"], counts["annotations_skipped"],
                counts["annotations_empty"], counts["ties_not_paired"], counts["answers_unrated"]) == (6, 1, 1, 1, 2, 0)
    else:
        assert report["agreement"] == {"measure": "pairwise_agreement", "annotator_pairs": 4, "best": 0.25,
                                       "worst": 0.25}
        assert (counts["annotations_used"], counts["annotations_partial"], counts["annotations_invalid"],
                counts["annotations_skipped"], counts["ties_not_paired"], counts["answers_unrated"],
                counts["tasks_without_used_annotation"]) == (6, 1, 1, 1, 1, 3, 1)


def test_partial_skip_leaves_out_the_whole_partial_rating():
    pairs, report = aggregate(toy_export("rating"), Scheme.rating, partial=Partial.skip)
    p2 = [p for p in pairs if p["prompt_id"] == "p2"]
    assert [(p["score_chosen"], p["score_rejected"], p["annotators"]) for p in p2] == [(5.0, 2.0, 1)]
    assert report["counts"]["annotations_partial"] == 1


def test_min_margin_and_strategy_reach_the_pairs():
    pairs, report = aggregate(toy_export("rating"), Scheme.rating, min_margin=2.5)
    assert [p["prompt_id"] for p in pairs] == ["p0"] and report["counts"]["below_min_margin"] == 1
    pairs, _ = aggregate(toy_export("best_worst"), Scheme.best_worst, strategy=RankingStrategy.all_pairs)
    # p0: 2 > 0 > -2 gives three pairs; p1: 1 > 0 > -1 three more; p2 ties.
    assert len(pairs) == 6


def test_choice_agreement_counts_every_pair_of_annotators():
    votes = [[{"best": 1, "worst": 2}, {"best": 1, "worst": 3}, {"best": 1, "worst": 2}]]
    assert choice_agreement(votes) == {"measure": "pairwise_agreement", "annotator_pairs": 3, "best": 1.0,
                                       "worst": round(1 / 3, 4)}


def test_label_config_round_trips_and_an_edited_one_is_refused():
    for scheme in Scheme:
        assert read_label_config(label_config(scheme, 4), "x") == (scheme, 4)
    edited = label_config(Scheme.rating, 3).replace('maxRating="5"', 'maxRating="10"')
    with pytest.raises(ValueError, match="not one train.annotate writes"):
        read_label_config(edited, "x")


def test_offline_export_writes_label_studio_import_json(tmp_path):
    answers, guide = write_inputs(tmp_path)
    code, out, _ = annotate("export", f"answers={answers}", "scheme=rating", f"guidelines={guide}",
                            f"out={tmp_path / 'tasks.json'}")
    assert code == 0, out
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert [t["data"]["prompt_id"] for t in tasks] == ["p0", "p1", "p2", "p3"]
    assert tasks[2]["data"]["answers"] == [{"slot": 1, "model": "policy", "sample": 0, "round": 1},
                                           {"slot": 2, "model": "policy", "sample": 1, "round": 1}]
    assert (tmp_path / "tasks.label_config.xml").read_text().count("<Rating ") == 3
    assert "wrote 4 tasks" in out


def test_export_reads_a_rounds_answers_directory(tmp_path):
    """On-policy generation writes <round>/answers/<model>/chunk-NNNNN.jsonl: the directory is one answers file."""
    rows = fx.answer_rows()
    for model in ("policy", "reference"):
        chunk = tmp_path / "answers" / model / "chunk-00000.jsonl"
        chunk.parent.mkdir(parents=True)
        chunk.write_text("".join(json.dumps({**r, "tokens": 3, "stopped": True}) + "\n" for r in rows
                                 if r["model"] == model))
    _, guide = write_inputs(tmp_path)
    code, out, err = annotate("export", f"answers={tmp_path / 'answers'}", "scheme=best_worst", f"guidelines={guide}",
                              "offline=true")
    assert code == 0, out + err
    tasks = json.loads((tmp_path / "answers.best_worst.labelstudio.json").read_text())
    assert [len(t["data"]["answers"]) for t in tasks] == [3, 3, 2, 3]


@pytest.mark.parametrize("argv, message", [
    (["export", "answers=A", "scheme=rating", "guidelines=missing.md"], "guidelines=missing.md: no such file"),
    (["export", "answers=A", "scheme=stars", "guidelines=G"], "scheme=stars: give scheme=best_worst|rating"),
    (["import", "file=F", "out=O", "strategy=best"], "strategy=best: give strategy=best_vs_worst|best_vs_rest|"),
    (["import", "out=O"], "give project=<title>"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, argv, message):
    answers, guide = write_inputs(tmp_path)
    argv = [a.replace("=A", f"={answers}").replace("=G", f"={guide}").replace("=F", f"={tmp_path / 'f.json'}")
            .replace("=O", f"={tmp_path / 'o'}").replace("=missing.md", "=missing.md") for a in argv]
    code, _, err = annotate(*argv)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_an_export_of_another_project_or_with_deleted_answers_is_refused(tmp_path):
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps([{"id": 1, "data": {"text": "hi"}, "annotations": []}]))
    code, _, err = annotate("import", f"file={foreign}", f"out={tmp_path / 'o'}")
    assert code == 2 and "not from a train.annotate export" in err, err
    tasks = toy_export("rating")
    del tasks[1]["data"]["answer_2"]
    damaged = tmp_path / "damaged.json"
    damaged.write_text(json.dumps(tasks))
    code, _, err = annotate("import", f"file={damaged}", f"out={tmp_path / 'o'}")
    assert code == 2 and "task 2 (prompt_id p1): answer 2 was deleted" in err, err
    code, _, err = annotate("import", f"file={damaged}", "project=other", f"out={tmp_path / 'o'}")
    assert code == 2 and "not 'other'" in err, err


def test_no_server_is_a_one_line_error(tmp_path):
    answers, guide = write_inputs(tmp_path)
    code, _, err = annotate("export", f"answers={answers}", "scheme=rating", f"guidelines={guide}",
                            f"url=http://127.0.0.1:{free_port()}")
    assert code == 2 and "no Label Studio answers at" in err and "make annotate-up" in err, err


# The real server: launch/annotate/server.sh starts it (installed once per user cache), one for the module.

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("label-studio")
    port = free_port()
    env = {**os.environ, "ANNOTATE_DIR": str(root), "ANNOTATE_PORT": str(port)}
    script = ["bash", str(REPO / "launch/annotate/server.sh")]
    # A machine without the cached install pays it here (minutes), once.
    up = subprocess.run([*script, "up"], env=env, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert up.returncode == 0, up.stdout + up.stderr
    url, token = f"http://127.0.0.1:{port}", (root / "api-token").read_text().strip()
    assert oct((root / "api-token").stat().st_mode & 0o777) == "0o600"
    assert f"export LABEL_STUDIO_API_KEY=$(cat {root / 'api-token'})" in up.stdout
    try:
        yield {"url": url, "token": token, "env": {"LABEL_STUDIO_URL": url, "LABEL_STUDIO_API_KEY": token},
               "rest": httpx.Client(base_url=url, headers={"Authorization": f"Token {token}"}, timeout=60),
               "root": root}
    finally:
        subprocess.run([*script, "down"], env=env, cwd=REPO, capture_output=True, timeout=120)


def project_id(rest: httpx.Client, title: str) -> int:
    return next(p["id"] for p in rest.get("/api/projects", params={"page_size": 100}).json()["results"]
                if p["title"] == title)


def task_ids(rest: httpx.Client, project: int) -> dict[str, int]:
    tasks = rest.get("/api/tasks", params={"project": project, "page_size": 100}).json()["tasks"]
    return {t["data"]["prompt_id"]: t["id"] for t in tasks}


@pytest.fixture(scope="module")
def labeled(server, tmp_path_factory):
    """Both schemes exported to the server, then labeled by annotators a, b and c through the REST API."""
    answers, guide = write_inputs(tmp_path_factory.mktemp("inputs"))
    rest = server["rest"]
    users = {}
    for name in USERS:
        reply = rest.post("/api/users/", json={"email": f"{name}@example.com", "username": name})
        assert reply.status_code == 201, reply.text
        users[name] = reply.json()["id"]
    for scheme in ("rating", "best_worst"):
        code, out, err = annotate("export", f"answers={answers}", f"scheme={scheme}", f"guidelines={guide}",
                                  f"project=fixture-{scheme}", env=server["env"])
        assert code == 0 and "added 4 tasks" in out, out + err
        ids = task_ids(rest, project_id(rest, f"fixture-{scheme}"))
        for prompt_id, by in fx.labels(scheme).items():
            for name, said in by.items():
                reply = rest.post(f"/api/tasks/{ids[prompt_id]}/annotations/",
                                  json={**fx.result(scheme, said), "completed_by": users[name]})
                assert reply.status_code == 201, reply.text
    return {"answers": answers, "guide": guide}


@pytest.mark.annotate
@pytest.mark.parametrize("scheme", ["rating", "best_worst"])
def test_labels_from_the_server_become_the_pairs_worked_out_by_hand(server, labeled, scheme, tmp_path):
    code, out, err = annotate("import", f"project=fixture-{scheme}", f"out={tmp_path}", env=server["env"])
    assert code == 0, out + err
    pairs = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert pairs == fx.expected_pairs(scheme)
    report = json.loads((tmp_path / "report.json").read_text())
    if scheme == "rating":
        assert report["agreement"]["alpha_ordinal"] == pytest.approx(fx.ALPHA_ORDINAL, abs=1e-4)
        assert report["agreement"]["alpha_interval"] == pytest.approx(fx.ALPHA_INTERVAL, abs=1e-4)
    else:
        assert (report["agreement"]["best"], report["agreement"]["worst"]) == (0.25, 0.25)
    assert report["counts"]["annotations_skipped"] == 1 and report["counts"]["pairs"] == 2
    for path in tmp_path.iterdir():
        assert server["token"] not in path.read_text()
    # The JSON export a user downloads from Label Studio gives the same pairs.
    export = server["rest"].get(f"/api/projects/{project_id(server['rest'], f'fixture-{scheme}')}/export",
                                params={"exportType": "JSON", "download_all_tasks": "true"})
    (tmp_path / "export.json").write_bytes(export.content)
    code, out, err = annotate("import", f"file={tmp_path / 'export.json'}", f"project=fixture-{scheme}",
                              f"out={tmp_path / 'from_file'}")
    assert code == 0, out + err
    assert (tmp_path / "from_file" / "train.jsonl").read_text() == (tmp_path / "train.jsonl").read_text()


@pytest.mark.annotate
def test_exporting_the_same_answers_again_adds_no_task(server, labeled):
    code, out, err = annotate("export", f"answers={labeled['answers']}", "scheme=rating",
                              f"guidelines={labeled['guide']}", "project=fixture-rating", env=server["env"])
    assert code == 0 and "added 0 tasks, 4 prompts" in out, out + err
    assert len(task_ids(server["rest"], project_id(server["rest"], "fixture-rating"))) == 4


@pytest.mark.annotate
def test_server_refusals_are_one_line_errors(server, labeled, tmp_path):
    rest, env = server["rest"], server["env"]
    export = ["export", f"answers={labeled['answers']}", "scheme=rating", f"guidelines={labeled['guide']}"]
    for bad_env, message in (({"LABEL_STUDIO_API_KEY": "0" * 40}, "refused the token"),
                             ({"LABEL_STUDIO_API_KEY": None}, "LABEL_STUDIO_API_KEY is not set")):
        code, _, err = annotate(*export, "project=fixture-rating", env={**env, **bad_env})
        assert code == 2 and message in err and err.count("\n") == 1, err
    # A labeling interface edited in Label Studio.
    assert annotate(*export, "project=edited", env=env)[0] == 0
    edited = label_config(Scheme.rating, 3).replace('maxRating="5"', 'maxRating="10"')
    assert rest.patch(f"/api/projects/{project_id(rest, 'edited')}/", json={"label_config": edited}).is_success
    for argv in (export + ["project=edited"], ["import", "project=edited", f"out={tmp_path}"]):
        code, _, err = annotate(*argv, env=env)
        assert code == 2 and "labeling interface is not one train.annotate writes" in err, err
    # A task whose answers were deleted from its data.
    assert annotate(*export, "project=damaged", env=env)[0] == 0
    ids = task_ids(rest, project_id(rest, "damaged"))
    task = rest.get(f"/api/tasks/{ids['p1']}").json()
    assert rest.patch(f"/api/tasks/{ids['p1']}", json={"data": {**task["data"], "answer_2": ""}}).is_success
    code, _, err = annotate("import", "project=damaged", f"out={tmp_path}", env=env)
    assert code == 2 and f"task {ids['p1']} (prompt_id p1): answer 2 was deleted" in err, err
    code, _, err = annotate("import", "project=no-such-project", f"out={tmp_path}", env=env)
    assert code == 2 and "no Label Studio project titled 'no-such-project'" in err, err


@pytest.mark.annotate
@pytest.mark.slow
def test_dpo_trains_on_the_imported_pairs(server, labeled, tmp_path):
    pairs = tmp_path / "pairs"
    assert annotate("import", "project=fixture-rating", f"out={pairs}", env=server["env"])[0] == 0
    results = read_results(run_train("debug=fast", "data=custom", f"data.source={pairs}",
                                     output_root=tmp_path / "outputs"))
    data = json.loads((Path(results["dpo"]["policy_path"]).parent / "data_report.json").read_text())
    assert data["pairs"]["train"] + data["pairs"]["test"] == 2  # the two pairs of the rating fixture
    assert "rewards/accuracies" in results["dpo"]["train"]
