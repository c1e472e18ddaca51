"""Which beta: the Pareto front, the recommendation and a search trial's objective, on toy rows; the
report built from toy run directories; the search sweeper's config. No training here (tests/test_search.py runs
a real search)."""

import csv
import json
import re

import pytest

from train.config.compose import compose
from train.core.errors import ConfigError
from train.sweep.recommend import (HELD_OUT_ACCURACY, JUDGE_REWARD, Point, check, objective, pareto_front,
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


# Uncertainty: every figure a sweep is ranked by carries its 95% interval and sample size, and runs the intervals
# cannot separate from the best are reported as tied (train/sweep/uncertainty.py, recommend.TIE_RULE).

def judged(run: str, beta: float, rewards: list[float], kl=None) -> dict:
    r = row(run, beta, judge=sum(rewards) / len(rewards), kl=kl)
    r["results"]["dpo"]["num_prompts"] = len(rewards)
    return {**r, "judge_rewards": rewards}


def test_bootstrap_and_wilson_intervals_on_known_data():
    from train.sweep.uncertainty import bootstrap_mean, wilson

    assert bootstrap_mean([2.5] * 32) == (2.5, 2.5)  # no spread, no uncertainty
    coin = [0.0, 1.0] * 16  # mean 0.5, standard error 0.5 / sqrt(32) = 0.088: 95% about +-0.17
    low, high = bootstrap_mean(coin)
    assert 0.30 <= low <= 0.36 and 0.64 <= high <= 0.70, (low, high)
    assert bootstrap_mean(coin) == (low, high)  # seeded: the same report every time
    assert bootstrap_mean(coin, seed=1) != (low, high)
    # Wilson: at 12/12 the lower bound is n / (n + z^2) (z = 1.96), not 1 as the normal approximation says.
    assert wilson(1.0, 12) == (pytest.approx(12 / (12 + 1.959964 ** 2), abs=1e-6), 1.0)
    assert wilson(0.5, 100) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))


def test_a_clear_winner_is_recommended_alone_with_its_interval_and_n():
    rows = [judged("b0.1", 0.1, [5.0, 5.2] * 16, kl=3.0), judged("b0.5", 0.5, [1.0, 1.2] * 16, kl=0.5)]
    best = recommend(rows)
    assert best.point.run == "b0.1" and [p.run for p in best.tied] == ["b0.1"]
    line = best.line()
    low, high = map(float, re.search(r"95% CI \[([\d.]+), ([\d.]+)\]", line).groups())
    assert 5.1 - 0.045 < low < 5.1 - 0.025 and 5.1 + 0.025 < high < 5.1 + 0.045  # +-1.96 x 0.1 / sqrt(32)
    assert line == (f"recommended: beta=0.1 (b0.1: judge reward 5.1, 95% CI [{low:.4g}, {high:.4g}], n=32 prompts, "
                    "KL 3; highest judge reward among all runs; no other run's interval overlaps it)")


def test_overlapping_intervals_are_tied_and_the_smallest_kl_among_them_is_recommended():
    noisy = [0.0, 4.0, 2.0, 6.0] * 8  # mean 3, standard error ~0.4
    rows = [judged("b0.05", 0.05, [x + 0.4 for x in noisy], kl=4.0),  # the best score: 3.4
            judged("b0.2", 0.2, [x + 0.2 for x in noisy], kl=1.0),
            judged("b0.5", 0.5, noisy, kl=2.0),
            judged("b1.0", 1.0, [x - 2.0 for x in noisy], kl=0.1)]  # 1.0: separable from the best, not tied
    best = recommend(rows)
    assert best.point.run == "b0.2" and sorted(p.run for p in best.tied) == ["b0.05", "b0.2", "b0.5"]
    line = best.line()
    assert line.startswith("recommended: beta=0.2 (b0.2: judge reward 3.2, 95% CI [")
    assert "n=32 prompts, KL 1;" in line
    assert line.endswith("tied within noise with beta=0.05, beta=0.5: their 95% intervals overlap "
                         "the best's (highest: beta=0.05, 3.4); the smallest KL among them)")


def test_a_perfect_held_out_accuracy_on_a_few_pairs_is_not_separable_from_one_miss():
    rows = [row("b0.1", 0.1, accuracy=1.0, kl=3.0), row("b0.5", 0.5, accuracy=11 / 12, kl=1.0)]
    for r in rows:
        r["results"]["dpo"]["held_out"]["num_pairs"] = 12
    best = recommend(rows)
    assert best.metric == HELD_OUT_ACCURACY and best.point.run == "b0.5"
    assert "95% CI [0.6461, 0.9851], n=12 pairs" in best.line() and "tied within noise with beta=0.1" in best.line()
    for r in rows:  # on 1200 pairs the same accuracies are separable: the best is recommended alone
        r["results"]["dpo"]["held_out"]["num_pairs"] = 1200
    assert recommend(rows).point.run == "b0.1" and "no other run's interval overlaps it" in recommend(rows).line()


def test_report_shows_each_runs_interval_and_n_and_marks_the_tied_runs(tmp_path):
    from train.report import write_report

    noisy = [0.0, 4.0, 2.0, 6.0] * 8
    for beta, shift, kl in ((0.1, 0.4, 4.0), (0.5, 0.0, 1.0), (1.0, -2.5, 0.2)):
        rewards = [x + shift for x in noisy]
        results = row("", beta, judge=sum(rewards) / 32, kl=kl)["results"]
        results["dpo"]["num_prompts"] = 32
        write_run(tmp_path, f"beta.value={beta}", results)
        samples = [{"index": i, "policy_reward": r, "reference_reward": 0.0} for i, r in enumerate(rewards)]
        (tmp_path / f"beta.value={beta}" / "eval_samples.jsonl").write_text("\n".join(map(json.dumps, samples)))
    recommendation = write_report(tmp_path)
    assert recommendation.point.run == "beta.value=0.5"
    report = (tmp_path / "report.md").read_text()
    section = report.split("## Uncertainty (judge reward)")[1].split("##")[0]
    assert "overlaps the best-scoring run's are tied" in section
    lines = [x for x in section.splitlines() if x.startswith("- ")]
    assert [x.split(" (")[0] for x in lines] == ["- beta=0.1", "- beta=0.5", "- beta=1"]  # by score
    assert all("n=32 prompts" in x for x in lines)
    assert lines[0].endswith(": tied") and lines[1].endswith(": recommended") and not lines[2].endswith("tied")
    rows = {r["run"]: r for r in csv.DictReader((tmp_path / "summary.csv").open())}
    assert [rows[f"beta.value={b}"]["tied"] for b in (0.1, 0.5, 1.0)] == ["yes", "yes", "no"]
    assert rows["beta.value=0.5"]["ci_n"] == "32" and float(rows["beta.value=0.5"]["ci95_low"]) < 3.0


def test_margins_plot_marks_a_run_that_logged_one_step():
    import numpy as np

    from train.sweep.plots import margins_figure

    results = {"beta": 0.1, "dpo": {"history": [{"step": 1, "rewards/margins": 0.05, "rewards/accuracies": 0.5}]}}
    fig = margins_figure([results])
    left = fig.axes[0]
    (line,) = left.get_lines()
    assert len(line.get_xdata()) == 1 and line.get_marker() == "o"
    fig.canvas.draw()  # the marker's pixels, in the run's colour, inside the plot area and outside its legend
    pixels = np.asarray(fig.canvas.buffer_rgba())[::-1, :, :3].astype(int)  # rows from the bottom, as bboxes count
    box, legend = left.get_window_extent(), left.get_legend().get_window_extent()
    colour = np.array([0x1F, 0x77, 0xB4])  # C0
    hits = [(x, y) for y, x in zip(*np.nonzero(np.abs(pixels - colour).sum(axis=2) < 60))
            if box.x0 < x < box.x1 and box.y0 < y < box.y1 and not (legend.x0 <= x <= legend.x1 and legend.y0 <= y <= legend.y1)]
    assert len(hits) > 5
