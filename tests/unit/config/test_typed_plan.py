"""The start check converts the composed config once (train/pipeline/checks.py): the plan carries it as the schema's
dataclasses, and the plain forms the run writes and hashes are what they were when it read the DictConfig."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from helpers.runs import refused_at_start, run_train
from train.config.choices import BetaSchedule, JudgeKind, RankingStrategy, Reference, Stage
from train.config.compose import compose
from train.config.schema import DataConfig, MainConfig, ModelConfig
from train.pipeline.checks import check_config


@pytest.mark.parametrize("overrides", [
    ["debug=fast"],
    ["data=custom", "data.source=tests/fixtures/custom/pairs.csv", "beta=adaptive", "dpo.reference=model"],
])
def test_the_plan_carries_the_typed_config_and_what_the_run_writes(overrides):
    cfg = compose(overrides)
    plan = check_config(cfg)
    config = plan.config
    assert isinstance(config, MainConfig) and isinstance(config.model, ModelConfig) and isinstance(config.data, DataConfig)
    # Closed choices stay Enum members; trainer settings are plain dicts.
    assert config.stage is Stage.all and isinstance(config.dpo.reference, Reference)
    assert isinstance(config.beta.schedule, BetaSchedule) and isinstance(config.judge.kind, JudgeKind)
    assert isinstance(config.data.ranking.strategy, RankingStrategy)
    assert type(config.dpo.args) is dict and type(config.sft.args) is dict
    # What the functions are handed is what the run records: config.yaml (written from plan.resolved) says exactly
    # the typed config's values, Enums by name, in the same order.
    assert OmegaConf.to_yaml(OmegaConf.structured(config)) == OmegaConf.to_yaml(plan.resolved)
    # The cache keys (SFT directory, prepared data) hash plain forms of sub-configs: the same as before.
    for key in ("model", "data", "sft", "beta"):
        assert dataclasses.asdict(getattr(config, key)) == OmegaConf.to_container(cfg[key], resolve=True), key


def test_a_setting_that_names_a_missing_key_is_refused_at_start_in_one_line():
    proc = refused_at_start("debug=fast", "wandb.name=${model.nothing}")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "model.nothing" in errors[0], proc.stderr[-2000:]


@pytest.mark.slow
def test_a_setting_only_hydras_job_resolves_is_converted_inside_the_job(tmp_path):
    """${hydra:...} does not resolve before Hydra starts, where the entry point checks: not a refusal there."""
    proc = run_train("debug=fast", "dry_run=true", "wandb.name=${hydra:job.name}", output_root=tmp_path)
    assert proc.returncode == 0 and "dry run: " in proc.stdout, proc.stderr[-2000:]
