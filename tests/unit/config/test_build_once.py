"""One run, each thing built or checked once: `python -m train` as a user starts it (train.main.main: the precheck,
then Hydra's job, then the pipeline), in this process on the smallest sizes, with counters around what the start
check builds. Before, the precheck and run() each checked the config (every TRL config built twice before the first
trainer), each trainer built its TRL config from the config again, beta was checked four times and the DPO layout
resolved at start and again by the trainer."""

from __future__ import annotations

import sys
from collections import Counter

import pytest

from helpers.runs import process_state_restored
from helpers.sizes import TINY
from train import main as entry
from train.config import trainer_args
from train.pipeline import checks
from train.pipeline import run as _  # noqa: F401  (loaded now, so the counters below find what it imports)
from train.trainer import beta, layouts


def count(monkeypatch, counts: Counter, module, name: str, by_stage: bool = False) -> None:
    """Wraps `module.name` (the attribute the code looks up when it calls it) to count its calls."""
    original = getattr(module, name)

    def counted(*args, **kwargs):
        # trainer_args(cfg, stage, cls) and construct(cls, stage, kwargs): the stage is the second argument
        counts[(name, args[1]) if by_stage else name] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


@pytest.fixture(scope="module")
def counts(tmp_path_factory):
    root = tmp_path_factory.mktemp("build_once")
    counted: Counter = Counter()
    with pytest.MonkeyPatch.context() as monkeypatch, process_state_restored():
        # Wherever the code calls it from: its own module, and any module that imported it by name.
        check_config = checks.check_config
        for module in [m for name, m in list(sys.modules.items()) if name.startswith("train.")]:
            if getattr(module, "check_config", None) is check_config:
                count(monkeypatch, counted, module, "check_config")
        count(monkeypatch, counted, beta, "check")
        count(monkeypatch, counted, layouts, "resolve")
        # The keys and values of a stage's trainer settings checked, and TRL's config constructed from them.
        count(monkeypatch, counted, trainer_args, "trainer_args", by_stage=True)
        count(monkeypatch, counted, trainer_args, "construct", by_stage=True)
        monkeypatch.setattr(sys, "argv", ["train", *TINY, f"output_root={root}"])
        monkeypatch.setattr(checks, "CHECKED", {}, raising=False)  # this process has checked nothing yet
        entry.main()
    assert (root / "runs").is_dir(), "the run wrote no run directory"
    results = list((root / "runs").glob("*/results.json"))
    assert len(results) == 1, results
    return counted


def test_the_config_is_checked_once_per_run(counts):
    assert counts["check_config"] == 1, counts
    assert counts["check"] == 1, counts  # beta.check


def test_each_stage_settings_are_checked_once(counts):
    assert {stage: counts[("trainer_args", stage)] for stage in ("sft", "dpo", "reward")} == \
        {"sft": 1, "dpo": 1, "reward": 1}, counts


def test_each_trained_stage_constructs_its_trl_config_at_the_check_and_for_its_trainer(counts):
    """Twice for a trained stage, by design: once in the check (single-process view, before anything is written)
    and once for the trainer in the process's real state (train/config/trainer_args.py StageArgs says why the
    checked one is not reused). The reward stage is not trained by stage=all: only its check."""
    assert {stage: counts[("construct", stage)] for stage in ("sft", "dpo", "reward")} == \
        {"sft": 2, "dpo": 2, "reward": 1}, counts


def test_the_dpo_layout_is_resolved_once(counts):
    assert counts["resolve"] == 1, counts
