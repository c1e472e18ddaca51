"""Refused at start, in one line, with nothing written: unknown keys in our own groups (with or
without `+`), mistyped trainer values, and multirun sweeps (every combination, secrets before Hydra writes)."""

import pytest

from helpers.runs import refused_at_start, start_check_refusal
from train.config.compose import compose, sweep_combinations
from train.config.typecheck import coerce
from train.pipeline.checks import check_config


@pytest.mark.parametrize("overrides,message", [
    (["+beta.vlue=0.2"], "beta.vlue: not a key of the beta group; did you mean beta.value?"),
    (["+sft.lora.rank=8"], "sft.lora.rank: not a key of the sft group"),
    (["+model.dtyp=bfloat16"], "model.dtyp: not a key of the model group; did you mean model.dtype?"),
    (["+checkpoint.every=5"], "checkpoint.every: not a key of the checkpoint group"),
    (["+seeed=1"], "seeed: not a key of the config; did you mean seed?"),
    (["dpo.args.learning_rate=abc"], "dpo.args.learning_rate='abc': DPOConfig expects a number"),
    (["sft.args.max_length=1.5"], "sft.args.max_length=1.5: SFTConfig expects an integer or null"),
    (["dpo.args.gradient_checkpointing=maybe"], "dpo.args.gradient_checkpointing='maybe': DPOConfig expects true or false"),
    (["dpo.args.loss_type=[1]"], "dpo.args.loss_type=[1]: DPOConfig expects a list of a string"),
    # Silent no-ops and late failures, now refused at start:
    (["dpo.args.loss_type=[foo]"], "dpo.args.loss_type: 'foo' is not a TRL loss type; choose from sigmoid, hinge, ipo"),
    (["dpo.args.report_to=[wandb]"], "dpo.args.report_to: W&B is set by the wandb group"),
    (["sft.args.report_to=[no_such_reporter]"], "sft.args.report_to: no_such_reporter is not installed"),
    (["+dpo.args.push_to_hub=true"], "dpo.args.push_to_hub=true: no Hugging Face token"),
    (["model.chat_template=chatml2"], "model.chat_template=chatml2: not a known template (chatml), a file, or a Jinja"),
])
def test_unknown_keys_and_mistyped_values_are_refused(overrides, message, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert message in start_check_refusal(overrides)


def test_known_template_names_and_loss_types_pass():
    check_config(compose(["model.chat_template=chatml", "dpo.args.loss_type=[sigmoid,ipo]", "+dpo.args.loss_weights=[1.0,0.5]"]))


def test_pass_throughs_still_take_new_keys_and_numeric_text():
    cfg = compose(["+dpo.args.weight_decay=0.01", "data=webgpt_comparisons", "data.options.strip_citations=false"])
    check_config(cfg)
    assert coerce("1e-6", float, "dpo.args.learning_rate", "DPOConfig") == 1e-6  # YAML reads 1e-6 as text
    assert coerce(3, float, "x", "DPOConfig") == 3


def test_sweep_combinations_expand_every_value():
    combos = sweep_combinations(["beta.value=0.1,0.2", "seed=range(2)", "debug=fast"])
    assert len(combos) == 4 and ["beta.value=0.2", "seed=1", "debug=fast"] in combos


@pytest.mark.parametrize("args,expected", [
    (["-m", "beta.value=0.1,-0.2"], "error: beta.value=-0.2: beta must be > 0"),
    (["-m", "+wandb.key=sk-12345", "beta.value=0.1,0.2"], "error: wandb.key: secrets must not be in the config"),
    (["+beta.vlue=0.2"], "error: beta.vlue: not a key of the beta group; did you mean beta.value?"),
    (["dpo.args.learning_rate=abc"], "error: dpo.args.learning_rate='abc': DPOConfig expects a number"),
])
def test_refusals_are_one_line_exit_2_and_write_nothing(args, expected, tmp_path):
    proc = refused_at_start(f"output_root={tmp_path}", *args)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and expected in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no run directory, no sweep directory, no multirun.yaml
    assert "sk-12345" not in proc.stdout + proc.stderr  # a secret is not echoed either
