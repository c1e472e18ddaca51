"""Values that used to pass the start checks and then train nothing, die mid-run, or print another run's results
are refused at start, in one line that names the setting that fixes them."""

from __future__ import annotations

import hashlib

import pytest

from omegaconf import OmegaConf

from helpers.runs import process_state_restored, run_train, start_check_refusal
from helpers.sizes import TINY
from train.config.compose import compose
from train.core.errors import ConfigError
from train.data import load_preference_data
from train.models.loading import ensure_base_model, load_tokenizer
from train.pipeline.checks import check_config
from train.pipeline.run import config_changes, run
from helpers.typed import typed


@pytest.mark.parametrize("overrides,message", [
    # learning_rate=0 trained the whole run and warned at the end; -1 passed the dry run and died in training.
    (["dpo.args.learning_rate=0"], "dpo.args.learning_rate=0: must be > 0"),
    (["dpo.args.learning_rate=-1"], "dpo.args.learning_rate=-1: must be > 0"),
    (["sft.args.learning_rate=0"], "sft.args.learning_rate=0: must be > 0"),
    (["sft.args.learning_rate=-1e-5"], "sft.args.learning_rate=-1e-05: must be > 0"),
    # 1.5 was accepted: 1 train pair, 239 test pairs.
    (["data.test_fraction=1.5"], "data.test_fraction=1.5: the share of prompts held out for testing must be between 0 and 1"),
    (["data.test_fraction=0"], "data.test_fraction=0.0: the share of prompts held out"),  # still held out one prompt
    (["data.test_fraction=1"], "data.test_fraction=1.0: the share of prompts held out"),
    (["data.max_drop_fraction=-0.1"], "data.max_drop_fraction=-0.1: a share of pairs, must be between 0 and 1"),
    # num_train_epochs=0 was told to lower the batch size.
    (["dpo.args.num_train_epochs=0"], "dpo.args.num_train_epochs=0: must be > 0 (or set dpo.args.max_steps=<steps> > 0)"),
    (["sft.args.num_train_epochs=0"], "sft.args.num_train_epochs=0: must be > 0 (or set sft.args.max_steps=<steps> > 0)"),
    # TRL 1.16's loss_type is a list: the refusal spells the fix out.
    (["dpo.args.loss_type=ipo"], "dpo.args.loss_type='ipo': DPOConfig expects a list of a string; use dpo.args.loss_type=[ipo]"),
])
def test_values_that_train_nothing_or_fail_later_are_refused_at_start(overrides, message):
    assert message in start_check_refusal(overrides)


@pytest.mark.parametrize("overrides", [
    ["data.test_fraction=0.5", "data.max_drop_fraction=0", "data.max_drop_fraction=1"],
    ["dpo.args.num_train_epochs=0", "+dpo.args.max_steps=3"],  # steps counted by max_steps
    ["sft.enabled=false", "sft.args.learning_rate=0", "sft.args.num_train_epochs=0"],  # a stage that does not run
    ["dpo.args.loss_type=[ipo]", "dpo.args.learning_rate=1e-7"],
])
def test_their_neighbours_still_pass(overrides):
    check_config(compose(overrides))


def test_prompts_too_long_for_max_length_name_max_length_not_the_drop_limit(tmp_path):
    """Every pair dropped because dpo.args.max_length is shorter than the prompts: the fix is max_length
    (the message used to say raise data.max_drop_fraction)."""
    cfg = compose([*TINY, f"output_root={tmp_path}", "dpo.args.max_length=6"])
    with pytest.raises(ConfigError) as err:
        load_preference_data(typed(cfg), load_tokenizer(cfg.model, ensure_base_model(typed(cfg).model), cfg.data.conversational))
    message = str(err.value)
    assert "prompt_too_long" in message and "\n" not in message
    assert "dpo.args.max_length=6" in message and message.endswith("raise dpo.args.max_length")
    assert "raise data.max_drop_fraction" not in message


def tree_state(directory) -> dict:
    """Every file under `directory` with its content hash and modification time: 'left untouched' made checkable."""
    return {str(p.relative_to(directory)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_finished_run_with_another_config_is_refused_and_left_untouched(tmp_path, capfd):
    run_dir = tmp_path / "runs" / "x"
    with process_state_restored():
        run(compose([*TINY, f"output_root={tmp_path}"]), run_dir, "x")
        capfd.readouterr()
        before = tree_state(run_dir)
        changed = compose([*TINY, f"output_root={tmp_path}", "beta.value=0.2", "dpo.args.learning_rate=0.01"])
        with pytest.raises(ConfigError) as err:
            run(changed, run_dir, "x")
        assert "finished:" not in capfd.readouterr().out
        with pytest.raises(ConfigError, match=r"\(eval.max_new_tokens 4 -> 3\): .*or judge it again there \(stage=eval\)$"):
            run(compose([*TINY, f"output_root={tmp_path}", "eval.max_new_tokens=3"]), run_dir, "x")
        # Settings that change neither training nor results (W&B, checkpoints, the name) still find it finished.
        run(compose([*TINY, f"output_root={tmp_path}", "name=x", "checkpoint.every_steps=7", "wandb.mode=disabled"]),
            run_dir, "x")
        assert capfd.readouterr().out.startswith("finished: ")
    message = str(err.value)
    assert message == (f"{run_dir} holds a finished run made with another config (beta.value 0.1 -> 0.2, "
                       "dpo.args.learning_rate 0.001 -> 0.01): give this run its own directory (name=<new name>), "
                       "or train there again from scratch (resume.enabled=false)")
    assert tree_state(run_dir) == before


def test_a_moved_output_root_is_the_same_run_and_an_added_argument_is_a_change(tmp_path):
    saved = compose(["output_root=/old/place"])
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.to_container(saved, resolve=True)))
    moved = OmegaConf.to_container(compose(["output_root=/new/place", "wandb.enabled=false"]), resolve=True)
    assert saved.model.name_or_path.startswith("/old/place/") and config_changes(tmp_path / "config.yaml", moved) == {}
    added = OmegaConf.to_container(compose(["output_root=/old/place", "+dpo.args.weight_decay=0.1"]), resolve=True)
    assert config_changes(tmp_path / "config.yaml", added) == {"dpo.args.weight_decay": ("(unset)", 0.1)}
    assert config_changes(tmp_path / "missing.yaml", added) == {}  # nothing to compare: as before
    newer_code = {**moved, "new_group": {"setting": 1}}  # a group added to the schema after the run finished
    assert config_changes(tmp_path / "config.yaml", newer_code) == {}


@pytest.mark.slow
def test_name_pointing_at_a_finished_run_of_another_config_is_one_line_from_the_command_line(tmp_path):
    small = ("debug=fast", "sft.enabled=false", "eval.enabled=false", "+dpo.args.max_steps=2", "checkpoint.every_steps=0",
             "name=x")
    run_train(*small, output_root=tmp_path)
    run_dir = tmp_path / "runs" / "x"
    before = tree_state(run_dir)
    proc = run_train(*small, "+dpo.args.weight_decay=0.1", output_root=tmp_path, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert errors == [f"error: {run_dir} holds a finished run made with another config (dpo.args.weight_decay (unset) "
                      "-> 0.1): give this run its own directory (name=<new name>), or train there again from scratch "
                      "(resume.enabled=false)"]
    assert "finished:" not in proc.stdout and tree_state(run_dir) == before
