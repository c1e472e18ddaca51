"""On-policy rounds (generate=on_policy): the start checks in-process, then the real pipeline on the tiny model:
SFT -> (sample -> label -> pair -> DPO -> eval) x 2, its files, and a rerun that resumes inside round 2."""

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers.runs import read_results, results_path, run_train
from train.config.compose import compose
from train.core.errors import ConfigError
from train.pipeline.rounds import check_rounds
from helpers.typed import typed

ROUNDS = ("debug=fast", "generate=on_policy", "labeler=sentiment", "generate.rounds=2",
          "generate.prompts.max_prompts=128", "dpo.args.warmup_steps=0")
DATA = SimpleNamespace(train_pairs={"prompt": [[{"role": "user", "content": "review: the film"}]]})


def refusal(*overrides: str, data=DATA) -> str:
    with pytest.raises(ConfigError) as err:
        check_rounds(typed(compose(["generate=on_policy", "labeler=sentiment", *overrides])), data)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_settings_that_cannot_make_pairs_are_refused_at_start(tmp_path):
    assert "generate.num_samples=1: must be at least 2: a pair needs two answers" in refusal("generate.num_samples=1")
    assert "generate.rounds=0" in refusal("generate.rounds=0")
    assert "labeler=none" in refusal("labeler=none")
    assert "dpo.reference=lora" in refusal("dpo.reference=lora")
    (tmp_path / "empty.txt").write_text("")
    assert "empty.txt" in refusal(f"generate.prompts.files=[{tmp_path / 'empty.txt'}]")
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "config.json").write_text("{}")
    assert "not a model directory with weights" in refusal(f"generate.models=[policy,{tmp_path / 'no-weights'}]")
    check_rounds(typed(compose(["generate=on_policy", "labeler=sentiment"])), DATA)  # the defaults pass


def test_offline_runs_are_not_checked():
    check_rounds(typed(compose(["labeler=none", "generate.num_samples=1"])), DATA)


@pytest.fixture(scope="module")
def two_rounds(shared_output_root):
    return run_train(*ROUNDS, output_root=shared_output_root, timeout=900)


@pytest.mark.slow
def test_two_rounds_write_rounds_pairs_and_raise_the_judge_reward(two_rounds):
    results = read_results(two_rounds)
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["prompts"] == 128 and r["answers"] == 128 * 4
        assert 0 < r["pairs"] <= 128
        assert r["label_mean_chosen"] > r["label_mean_rejected"]
        assert r["judge_reward"] is not None and r["kl_to_sft"] is not None
    assert results["dpo"]["policy_path"] == rounds[-1]["policy_path"]
    assert results["dpo"]["judge_reward"] == rounds[-1]["judge_reward"]
    # The direction the method promises, on the embedded task: the last round's policy above the SFT model.
    assert rounds[-1]["judge_reward"] > results["sft"]["judge_reward"], (rounds, results["sft"])
    out = two_rounds.stdout
    assert "== round 1/2: sampling 4 answers for 128 prompts from the SFT model on 1 process ==" in out
    assert "== round 2/2: sampling 4 answers for 128 prompts from round 1's policy on 1 process ==" in out
    assert "labels: sentiment on" in out


@pytest.mark.slow
def test_round_pairs_are_in_trls_format_and_the_run_policy_is_the_last_rounds(two_rounds):
    run_dir = Path(read_results(two_rounds)["dpo"]["policy_path"]).parents[2]
    pairs = [json.loads(line) for line in (run_dir / "rounds/round-1/pairs/train.jsonl").read_text().splitlines()]
    for pair in pairs:
        assert {"prompt", "chosen", "rejected", "score_chosen", "score_rejected", "chosen_model", "chosen_sample",
                "rejected_model", "rejected_sample"} <= set(pair)
        assert pair["score_chosen"] > pair["score_rejected"] and pair["round"] == 1
        assert pair["chosen"] != pair["rejected"]
    assert (run_dir / "policy").resolve() == (run_dir / "rounds/round-2/policy").resolve()


@pytest.mark.slow
def test_a_run_stopped_in_round_two_resumes_there(two_rounds, shared_output_root):
    """Round 2 lost everything after its answers (as a run stopped while labelling): the rerun keeps round 1,
    reuses round 2's answers (nothing generated twice) and trains round 2 to the same pairs."""
    results = read_results(two_rounds)
    run_dir = Path(results["dpo"]["policy_path"]).parents[2]
    second = run_dir / "rounds/round-2"
    answers = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (second / "answers").rglob("*.jsonl")}
    for name in ("labels", "pairs", "policy", "dpo", "round.json", ".complete", "COMPLETE"):
        path = second / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    for marker in run_dir.glob("*complete*"):
        marker.unlink()
    (run_dir / "COMPLETE").unlink(missing_ok=True)
    rerun = run_train(*ROUNDS, output_root=shared_output_root, timeout=900)
    assert "== round 1/2: finished before" in rerun.stdout
    assert "answers: policy chunk" not in rerun.stdout, "round 2's answers were generated again"
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (second / "answers").rglob("*.jsonl")} == answers
    again = read_results(rerun)["rounds"]
    assert again[1]["pairs"] == results["rounds"][1]["pairs"]
    assert again[0] == results["rounds"][0]


def round_rows(run_dir: Path, kind: str, round_index: int = 1) -> list[dict]:
    files = sorted((run_dir / f"rounds/round-{round_index}/{kind}").rglob("chunk-*.jsonl"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


@pytest.mark.multiproc
@pytest.mark.slow
def test_two_processes_under_zero3_sample_the_same_answers_and_pairs(two_rounds, shared_output_root):
    """The same SFT model (reused), the same prompts: 2 ranks taking alternate chunks under ZeRO-3 write the answers,
    labels and pairs one process wrote."""
    one = Path(read_results(two_rounds)["dpo"]["policy_path"]).parents[2]
    proc = run_train(*ROUNDS[:3], *ROUNDS[4:], "generate.rounds=1", "generate.chunk_prompts=32", "deepspeed=zero3",
                     output_root=shared_output_root, nproc=2, timeout=1200)
    two = results_path(proc).parent
    assert len(list((two / "rounds/round-1/answers").rglob("chunk-*.jsonl"))) == 4  # 128 prompts / 32, over 2 ranks
    assert round_rows(two, "answers") == round_rows(one, "answers")
    assert round_rows(two, "labels") == round_rows(one, "labels")
    pairs = [(r / "rounds/round-1/pairs/train.jsonl").read_text() for r in (one, two)]
    assert pairs[0] == pairs[1]
    assert read_results(proc)["distributed"]["world_size"] == 2


@pytest.mark.slow
def test_a_round_labelled_by_people_stops_after_sampling_and_continues_once_pairs_are_imported(shared_output_root):
    overrides = ("debug=fast", "generate=on_policy", "labeler=annotations", "generate.prompts.max_prompts=32")
    stopped = run_train(*overrides, output_root=shared_output_root, check=False, timeout=900)
    assert stopped.returncode == 75, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    line = next(x for x in stopped.stdout.splitlines() if x.startswith("stopped: round 1 waits for labels"))
    assert "python -m train.annotate export answers=" in line and "python -m train.annotate import" in line
    out_dir = Path(line.split(" out=")[1].split(";")[0])
    # What `train.annotate import` writes: TRL pairs with the annotators' scores (here: the longer answer wins).
    answers = round_rows(out_dir.parents[2], "answers")
    by_prompt: dict = {}
    for row in answers:
        by_prompt.setdefault(row["prompt_id"], []).append(row)
    pairs = []
    for rows in by_prompt.values():
        best, worst = max(rows, key=lambda r: len(r["answer"])), min(rows, key=lambda r: len(r["answer"]))
        if best["answer"].strip() and worst["answer"].strip() and best["answer"] != worst["answer"]:
            pairs.append({"prompt": best["prompt"], "chosen": best["answer"], "rejected": worst["answer"],
                          "score_chosen": 1.0, "score_rejected": -1.0})
    out_dir.mkdir(parents=True)
    (out_dir / "train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    resumed = run_train(*overrides, output_root=shared_output_root, timeout=900)
    assert "answers: policy chunk" not in resumed.stdout  # the answers people labelled are not sampled again
    (record,) = read_results(resumed)["rounds"]
    assert record["pairs"] == len(pairs) and record["labeler"] == "annotations"
