"""Closed choices are Enums (train/config/choices.py): defined once, refused at composition, never compared as string
literals in the code."""

import ast
from pathlib import Path

import pytest

from train.config import choices
from train.config.compose import compose
from train.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
ENUMS = [c for c in vars(choices).values() if isinstance(c, type) and issubclass(c, choices.Choice) and c is not choices.Choice]
# The config fields holding each choice, as the code names them (cfg.dpo.reference, s.reference, beta.schedule, ...).
FIELDS = {"stage": choices.Stage, "reference": choices.Reference, "batching": choices.Batching,
          "schedule": choices.BetaSchedule, "strategy": choices.RankingStrategy, "mode": choices.WandbMode,
          "keep_at_end": choices.KeepAtEnd, "zero": choices.ZeroOption}


def test_members_are_their_values():
    """A member's name is its value: dict lookups, json, f-strings and the YAML all see the same word."""
    for enum in ENUMS:
        for member in enum:
            assert member.name == member.value and member == member.value and f"{member}" == member.value
            assert hash(member) == hash(member.value)


@pytest.mark.parametrize("override, allowed", [
    ("stage=train", "all, sft, dpo, eval, reward"), ("dpo.reference=frozen", "model, precomputed, lora"),
    ("dpo.batching=pack", "auto, padded, packed, prefix_shared"), ("data.ranking.strategy=best", "best_vs_worst, best_vs_rest, all_pairs, adjacent"),
    ("wandb.mode=on", "auto, online, offline, disabled"), ("checkpoint.keep_at_end=some", "all, last, none")])
def test_a_value_outside_the_choice_is_refused_at_composition(override, allowed):
    with pytest.raises(ConfigError) as err:
        compose([override])
    assert f"{override}: choose one of {allowed}" in str(err.value) and "\n" not in str(err.value)


def test_composed_choices_are_members():
    cfg = compose([])
    assert cfg.stage is choices.Stage.all and cfg.dpo.reference in choices.Reference
    assert cfg.beta.schedule is choices.BetaSchedule.constant and cfg.judge.kind in choices.JudgeKind


def string_compares(path: Path) -> list[str]:
    """`<field> == "value"`, `!=`, `in ("value", ...)` where the field holds a closed choice and the literal is one of
    its values."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        left = node.left
        name = left.attr if isinstance(left, ast.Attribute) else left.id if isinstance(left, ast.Name) else None
        if name not in FIELDS:
            continue
        values = {m.value for m in FIELDS[name]}
        literals = [c.value for comp in node.comparators
                    for c in ([comp] if isinstance(comp, ast.Constant) else getattr(comp, "elts", []))
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)]
        if any(v in values for v in literals):
            found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_no_closed_choice_is_compared_as_a_string_literal():
    files = [p for d in ("train", "launch") for p in (REPO / d).rglob("*.py") if p.name != "choices.py"]
    assert [hit for f in files for hit in string_compares(f)] == []
