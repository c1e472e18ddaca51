"""One source for every default value: the schema (train/config/schema.py) or the YAML, never both.

Groups with several options keep their defaults in the schema and each option's YAML sets only what it
changes; groups with one option (and conf/config.yaml's own keys) keep their values in the YAML, and the
schema leaves those fields `???`. A value written in both places drifts (it did: dpo.reference).
"""

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml
from omegaconf import MISSING

from train.config import schema

CONF = Path(__file__).resolve().parents[3] / "conf"
GROUPS = {"model": schema.ModelConfig, "data": schema.DataConfig, "judge": schema.JudgeConfig,
          "labeler": schema.LabelerConfig,
          "beta": schema.BetaConfig, "deepspeed": schema.DeepSpeedConfig, "sft": schema.SFTStageConfig,
          "dpo": schema.DPOStageConfig, "eval": schema.EvalConfig, "wandb": schema.WandbConfig,
          "reward": schema.RewardStageConfig}


def schema_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return MISSING


def leaves(cls, values: dict, where: str):
    """(dotted key, YAML value, schema field default) for every typed leaf the YAML sets."""
    fields, hints = {f.name: f for f in dataclasses.fields(cls)}, typing.get_type_hints(cls)
    for key, value in values.items():
        assert key in fields, f"{where}: {key} is not in {cls.__name__}"
        spec = nested_spec(hints[key])
        if isinstance(value, dict) and spec is not None:
            yield from leaves(spec, value, f"{where}.{key}")
        else:
            yield f"{where}.{key}", value, schema_default(fields[key])


def nested_spec(hint):
    """The dataclass a field holds (ModelConfig.tiny: Optional[TinyModelSpec] -> TinyModelSpec), else None."""
    candidates = [hint, *typing.get_args(hint)]
    return next((c for c in candidates if isinstance(c, type) and dataclasses.is_dataclass(c)), None)


def options(group: str) -> list[Path]:
    return sorted((CONF / group).glob("*.yaml"))


def yaml_values(path: Path) -> dict:
    return {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k != "defaults"}


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_no_yaml_value_repeats_its_schema_default(group):
    repeated = [f"{path.name}: {key}={value!r}" for path in options(group)
                for key, value, default in leaves(GROUPS[group], yaml_values(path), group)
                if default is not MISSING and value == default]
    assert not repeated, f"written in the YAML and as the schema default: {repeated}"


@pytest.mark.parametrize("group", [g for g in sorted(GROUPS) if len(options(g)) == 1])
def test_single_option_groups_keep_their_values_in_the_yaml(group):
    (path,) = options(group)
    defaulted = [key for key, _, default in leaves(GROUPS[group], yaml_values(path), group) if default is not MISSING]
    assert not defaulted, f"{path.name} sets these, so their schema default is never used: {defaulted}"


def test_main_config_keys_are_written_once():
    values = yaml_values(CONF / "config.yaml")
    values.pop("hydra")
    defaulted = [key for key, _, default in leaves(schema.MainConfig, values, "config") if default is not MISSING]
    assert not defaulted, f"conf/config.yaml sets these, so their schema default is never used: {defaulted}"


def test_the_rule_catches_the_drift_it_was_written_for():
    """dpo.reference once said `model` in the schema and `precomputed` in conf/dpo/default.yaml."""
    field = next(f for f in dataclasses.fields(schema.DPOStageConfig) if f.name == "reference")
    assert schema_default(field) is MISSING
    drifted = dataclasses.make_dataclass("Drifted", [("reference", str, dataclasses.field(default="model"))])
    assert [k for k, _, d in leaves(drifted, {"reference": "precomputed"}, "dpo") if d is not MISSING] == ["dpo.reference"]
