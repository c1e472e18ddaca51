"""`python -m train.prepare` end to end (subprocess, as a user runs it), and tiny-model DPO runs on the
custom and hh_rlhf fixtures (slow)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.runs import REPO, read_results, run_train
from helpers.typed import typed

HH = ["data=hh_rlhf", "data.source=tests/fixtures/hh_rlhf"]
CUSTOM = ["data=custom", "data.source=tests/fixtures/custom/pairs.jsonl", "data.columns.prompt=instruction",
          "data.columns.chosen=better", "data.columns.rejected=worse"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("prepare")  # one tiny model for every call in this module


def prepare_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"TOKENIZERS_PARALLELISM": "false", "PATH": "/usr/bin:/bin", "HOME": str(root)}
    return subprocess.run([sys.executable, "-m", "train.prepare", f"output_root={root}", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def error_lines(proc) -> list[str]:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def test_prepare_writes_pairs_and_report(root):
    out = root / "eli5_pairs.jsonl"
    proc = prepare_cli(root, "data=eli5", "data.source=tests/fixtures/eli5", "data.ranking.strategy=best_vs_rest", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not error_lines(proc)
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(pairs) == 7 and all(set(p) == {"prompt", "chosen", "rejected"} for p in pairs)
    assert pairs[0]["prompt"] == [{"role": "user", "content": "ELI5: why is the sky blue?"}]
    assert "data: eli5 (tests/fixtures/eli5): 9+0 rows -> 7 train pairs" in proc.stdout
    assert "filtered by the source's rules: tie 1, single_response 1; fixed: empty 1, response_truncated 1" in proc.stdout
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["pairs"]["train"] == 7 and report["drop_fraction"] == 0.0


def test_prepare_above_the_threshold_exits_nonzero_with_one_line(root):
    out = root / "hh_pairs.jsonl"
    proc = prepare_cli(root, *HH, "data.conversational=false", f"+out={out}")
    assert proc.returncode == 2
    (line,) = error_lines(proc)
    assert line.startswith("error: data=hh_rlhf: 9 of 20 pairs dropped (45.0% > data.max_drop_fraction=0.05): missing_field 1")
    assert line.endswith("fix the source or raise data.max_drop_fraction")
    assert "dropped 9 (45.0%, limit 5.0%)" in proc.stdout  # the report comes first
    pairs = [json.loads(line) for line in out.read_text().splitlines()]  # written anyway, to look at
    assert len(pairs) == 8 and pairs[0]["prompt"].startswith("Human: write a review")
    ok = prepare_cli(root, *HH, "data.max_drop_fraction=0.5", f"out={out}")
    assert ok.returncode == 0, ok.stderr[-3000:]


@pytest.mark.parametrize("args,expected", [
    (["data=shp", "data.source=tests/fixtures/no_such_dir"], "error: data.source=tests/fixtures/no_such_dir: no such file or directory"),
    (["data=nosuchsource"], "error: data is a config group (options: custom, eli5"),
    (["data=eli5"], "error: give out=<file.jsonl> once"),
])
def test_prepare_bad_input_is_one_line_without_traceback(root, args, expected):
    out = [] if "eli5" in args[0] else [f"out={root / 'x.jsonl'}"]
    proc = prepare_cli(root, *args, *out)
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("overrides,pairs", [(CUSTOM, {"train": 18, "test": 2}), (HH, {"train": 8, "test": 3})], ids=["custom", "hh_rlhf"])
def test_tiny_dpo_run_on_fixture(overrides, pairs, tmp_path):
    proc = run_train(*overrides, "data.max_drop_fraction=0.5", "debug=fast", "eval.enabled=false", output_root=tmp_path)
    results = read_results(proc)
    assert results["dpo"]["steps"] >= 1 and "rewards/margins" in results["dpo"]["train"]
    assert "loss" in results["dpo"]["held_out"]
    run_dir = Path(results["dpo"]["policy_path"]).parent
    report = json.loads((run_dir / "data_report.json").read_text())
    assert report["pairs"] == pairs and report["max_length"] == 128


@pytest.mark.slow
def test_trl_drops_long_prompts_silently_and_keeps_identical_pairs(tmp_path):
    """Why the report exists: TRL 1.16's DPOTrainer filters prompts that fill max_length without a word,
    and trains on chosen == rejected. Checked on the tiny model."""
    import datasets
    from trl import DPOConfig, DPOTrainer

    from train.config.compose import compose
    from train.models.loading import ensure_base_model, load_tokenizer

    cfg = compose([f"output_root={tmp_path}"])
    path = ensure_base_model(typed(cfg).model)
    user, bot = (lambda t: [{"role": "user", "content": t}]), (lambda t: [{"role": "assistant", "content": t}])
    rows = [
        {"prompt": user("write a review of the comedy"), "chosen": bot("a great film"), "rejected": bot("a dull film")},
        {"prompt": user("write a review " * 100), "chosen": bot("a great film"), "rejected": bot("a dull film")},
        {"prompt": user("write a review of the drama"), "chosen": bot("the same"), "rejected": bot("the same")},
    ]
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_length=64, bf16=False, report_to=[], gradient_checkpointing=False)
    trainer = DPOTrainer(model=path, args=args, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=load_tokenizer(cfg.model, path, cfg.data.conversational))
    kept = trainer.train_dataset
    assert len(kept) == 2  # the long prompt is gone, nothing was said
    assert kept[1]["chosen_ids"] == kept[1]["rejected_ids"]  # the identical pair stays
