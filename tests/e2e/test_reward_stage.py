"""stage=reward: a reward model trained with TRL's RewardTrainer on the data group's pairs, from the SFT model, saved
to <run dir>/reward_model/ as a classifier that judge=reward_model loads; its held-out accuracy in results.json;
checkpoints and resume as SFT and DPO. Not part of stage=all."""

import shlex
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from helpers.runs import read_results, run_train, start_check_refusal
from train.config.compose import compose
from train.config.choices import Stage
from helpers.trainer_config import trl_config
from train.console.banners import training_banner
from train.console.summary import summary_lines
from train.data import load_preference_data
from train.models import judges
from train.models.loading import load_tokenizer
from train.models.sampling import win_rate
from train.pipeline.checks import check_config
from helpers.typed import typed


def test_reward_settings_build_trls_reward_config_with_the_pipelines_checkpoints(tmp_path):
    cfg = compose(["stage=reward", "reward.args.learning_rate=0.002", "checkpoint.every_steps=7"])
    check_config(cfg)
    args = trl_config(cfg, Stage.reward, tmp_path)
    assert type(args).__name__ == "RewardConfig"
    assert (args.learning_rate, args.save_steps, args.seed, args.max_length) == (0.002, 7, cfg.seed, 128)
    assert args.bf16 is (torch.cuda.is_available() and torch.cuda.is_bf16_supported())  # TRL's True fails on CPU
    assert args.model_init_kwargs["dtype"] == cfg.model.dtype


def test_debug_fast_sizes_the_reward_stage_down():
    assert compose(["debug=fast"]).reward.args.num_train_epochs < compose([]).reward.args.num_train_epochs


@pytest.mark.parametrize("overrides,message", [
    (["stage=reward", "+reward.args.learning_rat=0.1"],
     "reward.args.learning_rat: not a RewardConfig setting; did you mean reward.args.learning_rate?"),
    (["stage=reward", "reward.args.learning_rate=0"], "reward.args.learning_rate=0: must be > 0"),
    (["stage=reward", "reward.enabled=false"], "stage=reward with reward.enabled=false: nothing to train"),
    (["stage=reward", "+reward.args.seed=3"], "reward.args.seed: set the top-level seed"),
])
def test_bad_reward_settings_are_refused_in_one_line(overrides, message):
    assert message in start_check_refusal(overrides)


def test_the_banner_counts_pairs_and_the_summary_shows_the_reward_model(tmp_path):
    args = trl_config(compose(["stage=reward"]), Stage.reward, tmp_path)
    banner = training_banner("reward", args, 2000, 1, "pairs")
    assert banner.startswith("== reward: training 189 optimizer steps on 1 process") and "2000 pairs" in banner
    lines = summary_lines({"reward": {"path": "/r/reward_model", "held_out_accuracy": 0.95, "num_pairs": 64},
                           "runtime_s": {"reward": 12.0}}, tmp_path)
    assert "  reward model      held-out accuracy 0.950 on 64 pairs; /r/reward_model" in lines
    assert any("reward 12.0 s" in line for line in lines)


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("reward_stage")
    proc = run_train("debug=fast", "stage=reward", output_root=root)
    return root, proc, read_results(proc)


@pytest.mark.slow
def test_stage_reward_trains_from_sft_and_records_held_out_accuracy(reward_run):
    root, proc, results = reward_run
    reward = results["reward"]
    assert reward["num_pairs"] == 32 and reward["steps"] == 16 and reward["runtime_s"] > 0
    assert reward["start_model"] == results["sft"]["path"] and Path(reward["start_model"]).parent == root / "sft"
    assert 0.7 <= reward["held_out_accuracy"] <= 1  # an untrained score head ranks about half the pairs right
    assert "== reward: training 16 optimizer steps" in proc.stdout and "pairs/step; 512 pairs" in proc.stdout
    assert (f"reward model: held-out accuracy {reward['held_out_accuracy']:.2f} on 32 pairs; saved to "
            f"{reward['path']}") in proc.stdout
    assert "dpo" not in results and not (Path(reward["path"]).parent / "policy").exists()  # DPO did not run


@pytest.mark.slow
def test_the_saved_reward_model_is_a_judge_that_reproduces_the_held_out_accuracy(reward_run):
    root, proc, results = reward_run
    model_dir = Path(results["reward"]["path"])
    config = AutoConfig.from_pretrained(model_dir)
    assert config.num_labels == 1 and config.architectures == ["LlamaForSequenceClassification"]
    assert config.pad_token_id is not None  # a classifier finds each row's last token by it
    assert (model_dir / "COMPLETE").exists() and (model_dir / "tokenizer.json").exists()
    # The overrides the run printed for it, as a shell splits them.
    (hint,) = [line.split("(to judge with it: ")[1].rstrip(")") for line in proc.stdout.splitlines()
               if line.startswith("reward model: ")]
    cfg = compose(["debug=fast", f"output_root={root}", *shlex.split(hint)])
    assert cfg.judge.name_or_path == str(model_dir)
    check_config(cfg)
    judges.check_reward_model(cfg.judge, cfg.data.conversational)  # one label, a tokenizer with a chat template
    judge = judges.load_judge(cfg.judge, cfg.data.conversational, torch.device("cpu"))
    data = load_preference_data(typed(cfg), load_tokenizer(cfg.model, cfg.model.name_or_path, cfg.data.conversational))
    rows = data.test_pairs[:]
    chosen = judge.score(rows["prompt"], [judges.response_text(r) for r in rows["chosen"]])
    rejected = judge.score(rows["prompt"], [judges.response_text(r) for r in rows["rejected"]])
    assert win_rate(chosen, rejected) == pytest.approx(results["reward"]["held_out_accuracy"], abs=1e-9)


# 8 reward steps, each logged, a checkpoint every 4; a short SFT (its own cache key) to keep the three runs quick.
SHORT = ("debug=fast", "stage=reward", "+sft.args.max_steps=4", "+reward.args.max_steps=8",
         "reward.args.logging_steps=1", "checkpoint.every_steps=4", "checkpoint.keep_at_end=all")


@pytest.mark.slow
def test_a_signal_during_reward_training_checkpoints_and_the_rerun_resumes_it_exactly(tmp_path):
    straight = read_results(run_train(*SHORT, output_root=tmp_path / "straight"))
    stopped = run_train(*SHORT, output_root=tmp_path / "split", check=False, env={"DPO_FAULT_INJECT": "sigterm:6@reward"})
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    assert "preempted: checkpoint at step 6 complete" in stopped.stdout
    (run_dir,) = (tmp_path / "split" / "runs").iterdir()
    assert {p.name for p in (run_dir / "reward").iterdir() if (p / "COMPLETE").exists()} == {"checkpoint-4",
                                                                                             "checkpoint-6"}
    assert not (run_dir / "reward_model" / "COMPLETE").exists()
    resumed = run_train(*SHORT, output_root=tmp_path / "split")
    assert f"resume: continuing from {run_dir / 'reward' / 'checkpoint-6'}" in resumed.stdout
    got, want = read_results(resumed)["reward"], straight["reward"]
    assert got["resumed_from"] == str(run_dir / "reward" / "checkpoint-6") and got["steps"] == want["steps"] == 8
    assert got["train"]["loss"] == pytest.approx(want["train"]["loss"], rel=1e-5)
    assert got["held_out_accuracy"] == want["held_out_accuracy"]
    shutil.rmtree(tmp_path, ignore_errors=True)
