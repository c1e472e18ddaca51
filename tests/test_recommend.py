"""Which beta (issue 15): the Pareto front, the recommendation and a search trial's objective, on toy rows; the
report built from toy run directories; the search sweeper's config. No training here (tests/test_search.py runs
a real search)."""

import csv
import json

import pytest

from train.config.compose import compose
from train.core.errors import ConfigError
from train.pipeline.recommend import (HELD_OUT_ACCURACY, JUDGE_REWARD, Point, check, objective, pareto_front,
                                      recommend, scored)


def row(run: str, beta: float, judge=None, kl=None, accuracy=0.8, status="ok") -> dict:
    dpo = {"train": {"rewards/margins": 1.0}, "held_out": {"rewards/accuracies": accuracy}}
    if judge is not None:
        dpo["judge_reward"] = judge
    if kl is not None:
        dpo["kl_to_reference"] = kl
    return {"run": run, "status": status, "error": None if status == "ok" else "boom",
            "results": {"beta": beta, "dpo": dpo}}


def test_pareto_front_keeps_the_runs_no_other_beats_on_reward_and_kl():
    points = [Point("a", 0.5, 1.0, 0.5), Point("b", 0.1, 3.0, 2.0), Point("c", 0.2, 2.0, 2.5),  # c: b beats it
              Point("d", 0.05, 3.0, 4.0), Point("e", 0.01, 3.5, 5.0), Point("f", 0.3, 9.0, None)]  # d: tie, more KL
    assert [p.run for p in pareto_front(points)] == ["a", "b", "e"]  # f has no KL: not placed on the front


def test_recommends_the_best_judge_reward_and_respects_the_kl_budget():
    rows = [row("b0.5", 0.5, judge=1.0, kl=0.5), row("b0.1", 0.1, judge=3.0, kl=2.0),
            row("b0.01", 0.01, judge=3.5, kl=5.0), row("b0.05", 0.05, status="failed")]
    best = recommend(rows)
    assert (best.metric, best.point.run, best.point.beta) == (JUDGE_REWARD, "b0.01", 0.01)
    assert best.line().startswith("recommended: beta=0.01 (b0.01: judge reward 3.5, KL 5;")
    assert recommend(rows, kl_budget=2.0).point.run == "b0.1"  # KL <= budget counts as within
    none = recommend(rows, kl_budget=0.1)
    assert none.point is None and none.line() == "recommended: none (no run has a judge reward and KL <= 0.1)"


def test_without_a_judge_the_held_out_accuracy_ranks_and_ties_go_to_less_kl_then_larger_beta():
    rows = [row("b0.1", 0.1, accuracy=0.9, kl=3.0), row("b0.5", 0.5, accuracy=0.9, kl=1.0),
            row("b0.2", 0.2, accuracy=0.7, kl=0.5)]
    best = recommend(rows)
    assert (best.metric, best.point.run) == (HELD_OUT_ACCURACY, "b0.5")
    no_kl = [row("b0.1", 0.1, accuracy=0.9), row("b0.5", 0.5, accuracy=0.9)]  # eval.enabled=false
    assert recommend(no_kl).point.run == "b0.5"
    assert recommend(no_kl, kl_budget=1.0).point is None  # without a KL estimate no run is known to be within it


def test_runs_without_the_metric_are_listed_with_the_reason():
    rows = [row("judged", 0.1, judge=2.0, kl=1.0), row("unjudged", 0.2, kl=1.0), row("broken", 0.3, status="failed")]
    points, missing = scored(rows, JUDGE_REWARD)
    assert [p.run for p in points] == ["judged"]
    assert missing == [("unjudged", "no judge reward in results.json"), ("broken", "failed (boom)")]


def test_objective_is_the_metric_a_search_trial_returns():
    judged, unjudged = row("a", 0.1, judge=2.5, kl=1.0)["results"], row("b", 0.1, accuracy=0.75)["results"]
    assert objective(judged, "auto") == 2.5 and objective(unjudged, "auto") == 0.75
    assert objective(judged, HELD_OUT_ACCURACY) == 0.8
    with pytest.raises(ConfigError, match="search.metric=dpo.judge_reward: this run has no such value"):
        objective(unjudged, JUDGE_REWARD)  # a failed job: Optuna counts a failed trial, the search goes on


@pytest.mark.parametrize("metric,budget,message", [
    ("dpo.loss", None, "search.metric=dpo.loss: not a metric a search can maximize; use one of auto, "),
    ("auto", -1.0, "report.kl_budget=-1.0: a KL budget is >= 0 nats per sample"),
])
def test_bad_search_and_report_settings_are_refused(metric, budget, message):
    check("auto", 0.0)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        check(metric, budget)


def write_run(sweep_dir, name: str, results: dict | None) -> None:
    run_dir = sweep_dir / name
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("report: {kl_budget: 2.0}\n")
    if results is not None:
        history = [{"step": 5, "rewards/margins": 0.2, "rewards/accuracies": 0.6, "beta": results["beta"]},
                   {"step": 10, "rewards/margins": 0.5, "rewards/accuracies": 0.8, "beta": results["beta"]}]
        results = {**results, "runtime_s": {"dpo": 1.0}, "sft": {"judge_reward": 0.1}}
        results["dpo"] = {**results["dpo"], "history": history, "steps": 10}
        (run_dir / "results.json").write_text(json.dumps(results))


def test_report_marks_the_recommended_run_and_lists_what_is_not_plotted(tmp_path):
    from train.report import budget_from_runs, write_report

    write_run(tmp_path, "beta.value=0.5", row("", 0.5, judge=1.0, kl=0.5)["results"])
    write_run(tmp_path, "beta.value=0.1", row("", 0.1, judge=3.0, kl=1.5)["results"])
    write_run(tmp_path, "beta.value=0.01", row("", 0.01, judge=4.0, kl=6.0)["results"])
    write_run(tmp_path, "beta.value=0.2", row("", 0.2, kl=1.0)["results"])  # the judge failed on this one
    write_run(tmp_path, "beta.value=0.05", None)  # never finished
    assert budget_from_runs(tmp_path) == 2.0
    recommendation = write_report(tmp_path, kl_budget=2.0)
    assert recommendation.point.run == "beta.value=0.1"
    rows = {r["run"]: r for r in csv.DictReader((tmp_path / "summary.csv").open())}
    assert [name for name, r in rows.items() if r["recommended"] == "yes"] == ["beta.value=0.1"]
    report = (tmp_path / "report.md").read_text()
    assert recommendation.line() in report and "KL budget (report.kl_budget): 2 nats" in report
    not_plotted = report.split("## Not on reward_vs_kl.png")[1].split("##")[0]
    assert "- beta.value=0.2: no judge reward in results.json" in not_plotted
    assert "- beta.value=0.05: failed (no finished results.json)" in not_plotted
    assert "grow with beta by construction" in report
    assert (tmp_path / "reward_vs_kl.png").stat().st_size > 0 and (tmp_path / "margins.png").stat().st_size > 0


def test_a_damaged_or_hand_edited_results_file_fails_its_run_not_the_report(tmp_path):
    from train.report import write_report

    write_run(tmp_path, "beta.value=0.1", row("", 0.1, judge=3.0, kl=1.5)["results"])
    write_run(tmp_path, "beta.value=0.2", row("", 0.2, judge=2.0, kl=1.0)["results"])
    truncated = tmp_path / "beta.value=0.2" / "results.json"
    truncated.write_text(truncated.read_text()[:40])
    write_run(tmp_path, "beta.value=0.3", row("", 0.3, judge=5.0, kl=0.5)["results"])
    edited = tmp_path / "beta.value=0.3" / "results.json"
    results = json.loads(edited.read_text())
    results.update(beta="abc", beta_schedule="x", runtime_s={"dpo": "y"})
    results["dpo"].update(history=[{"step": "z"}, 7], held_out="zzz", steps="w")
    edited.write_text(json.dumps(results))
    write_run(tmp_path, "beta.value=0.4", None)
    (tmp_path / "beta.value=0.4" / "results.json").write_text("[1, 2]")
    recommendation = write_report(tmp_path, kl_budget=None)
    assert recommendation.point.run == "beta.value=0.3" and recommendation.point.beta is None  # its judge reward
    report = (tmp_path / "report.md").read_text()
    assert "- beta.value=0.2: results.json unreadable (JSONDecodeError: " in report
    assert "- beta.value=0.4: results.json is not a JSON object" in report
    assert (tmp_path / "margins.png").stat().st_size > 0


def test_beta_search_sweeper_searches_beta_on_a_log_scale():
    sweeper = compose(["hydra/sweeper=beta_search"], return_hydra_config=True).hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.params["beta.value"] == "tag(log, interval(0.01, 1.0))"


def test_an_adaptive_beta_run_is_named_by_its_rule_not_as_a_constant_beta():
    rows = [{"run": "adaptive", "status": "ok", "results": {"beta": 0.1, "beta_schedule": {"schedule": "adaptive"},
                                                             "dpo": {"judge_reward": 5.0, "kl_to_reference": 3.0}}},
            {"run": "b0.1", "status": "ok", "results": {"beta": 0.1, "dpo": {"judge_reward": 4.0, "kl_to_reference": 3.0}}}]
    points, _ = scored(rows, JUDGE_REWARD)
    assert [p.beta_text for p in points] == ["beta=adaptive (0.1 at step 0)", "beta=0.1"]
