"""Command-line overrides a user types the way other tools spell them: one line that says what to type instead
(a config group given a value, a key typo without `+`, a value of the wrong type), and a valid TRL setting that
the YAML does not list accepted without `+`."""

import subprocess
import sys

import pytest

from helpers.runs import REPO, refused_at_start
from train.config.compose import compose, compose_overrides, sweep_combinations
from train.config.validate import validate
from train.core.errors import ConfigError
from train.main import precheck


@pytest.mark.parametrize("override,message", [
    ("beta=0.2", "beta is a config group (options: adaptive, constant, cosine, linear); use beta.value=0.2"),
    ("deepspeed=3", "deepspeed is a config group (options: none, zero1, zero2, zero3, zero3_offload); "
                    "use deepspeed=zero3"),
    ("model=/models/my-qwen", "to train the model at /models/my-qwen, write conf/model/mine.yaml (name_or_path: "
                              "/models/my-qwen, see conf/model/qwen2_5_0_5b.yaml) and run model=mine "
                              "recipe=real_model"),
    ("data=/data/pairs.jsonl", "use data=custom data.source=/data/pairs.jsonl"),
    ("judge=org/reward-model", "use judge=reward_model judge.name_or_path=org/reward-model"),
    ("eval=false", "eval is a config group (options: default); use eval.enabled=false"),
    ("beta=cosin", "did you mean beta=cosine?"),
    ("recipe=null", "recipe is a config group (options: real_model); to use none of them, leave recipe out or remove "
                    "it with ~recipe"),
    ("model=qwen", "model is a config group (options: llama3_8b, mistral_7b, qwen2_5_0_5b, tiny); choose one, or add "
                    "conf/model/qwen.yaml for one of your own"),
])
def test_a_group_given_a_value_names_its_options_and_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        compose([override])
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("override,message", [
    ("beta.valu=0.2", "beta.valu: not a key of the beta group; did you mean beta.value?"),
    ("dpo.args.learnig_rate=1e-6", "dpo.args.learnig_rate: not a DPOConfig setting; did you mean "
                                   "dpo.args.learning_rate?"),
    ("dpo.args.beta=0.2", "dpo.args.beta: set beta with the beta group, e.g. beta.value="),
    ("sft.args.weight_decy=0.1", "did you mean sft.args.weight_decay?"),
])
def test_a_key_typo_without_plus_gets_did_you_mean(override, message):
    """Hydra's own answer was "Could not override 'X'. To append to your config use +X=...": the `+` form then
    got the did-you-mean; now the first attempt does."""
    with pytest.raises(ConfigError) as err:
        validate(compose([override]))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_trl_setting_not_in_the_yaml_is_accepted_without_plus():
    cfg, added = compose_overrides(["dpo.args.push_to_hub=true", "sft.args.weight_decay=0.1", "beta.value=0.2"])
    assert cfg.dpo.args.push_to_hub is True and cfg.sft.args.weight_decay == 0.1 and cfg.beta.value == 0.2
    assert added == {"dpo.args.push_to_hub", "sft.args.weight_decay"}  # keys already in the config stay as given
    validate(compose(["sft.args.weight_decay=0.1"]))


def test_deepspeed_config_keys_still_need_plus():
    """Nothing checks DeepSpeed's JSON keys after composing: a typo there stays refused, in one line."""
    with pytest.raises(ConfigError, match=r"Could not override 'deepspeed.config.zero_optimization.stagee'") as err:
        compose(["deepspeed=zero3", "deepspeed.config.zero_optimization.stagee=3"])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override,message", [
    ("beta.value=abc", "beta.value=abc: expected a float"),
    ("checkpoint.every_steps=often", "checkpoint.every_steps=often: expected an integer"),
    ("sft.enabled=maybe", "sft.enabled=maybe: expected true or false"),
])
def test_a_value_of_the_wrong_type_names_the_type(override, message):
    with pytest.raises(ConfigError) as err:
        compose([override])
    assert str(err.value) == message


def test_a_sweep_of_a_trl_setting_reaches_hydra_with_plus(tmp_path):
    """The command line Hydra parses (its multirun included) gets the `+` form; each job composes."""
    argv = ["-m", "sft.args.weight_decay=0.0,0.1", "beta.value=0.1,0.2", f"output_root={tmp_path}"]
    rewritten = precheck(argv)
    assert rewritten == ["-m", "+sft.args.weight_decay=0.0,0.1", "beta.value=0.1,0.2", f"output_root={tmp_path}"]
    jobs = sweep_combinations(rewritten[1:])
    assert [compose(job).sft.args.weight_decay for job in jobs] == [0.0, 0.0, 0.1, 0.1]


def train_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("override,message", [
    ("beta=0.2", "error: beta is a config group (options: adaptive, constant, cosine, linear); use beta.value=0.2"),
    ("dpo.args.learnig_rate=1e-6", "error: dpo.args.learnig_rate: not a DPOConfig setting; did you mean "
                                   "dpo.args.learning_rate?"),
])
def test_the_command_prints_one_error_line(override, message, tmp_path):
    proc = refused_at_start(f"output_root={tmp_path}", override)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and errors == [message], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cfg_job_shows_a_trl_setting_given_without_plus(tmp_path):
    proc = train_command("--cfg", "job", f"output_root={tmp_path}", "sft.args.weight_decay=0.1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "weight_decay: 0.1" in proc.stdout
