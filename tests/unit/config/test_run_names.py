"""Run directory names: readable when short, a prefix plus a hash when long, one directory level
whatever the values, the same on every rank and restart; `name=` names a run; `experiment=` names a sweep."""

from pathlib import Path

from hydra.core.hydra_config import HydraConfig

from train.config.compose import MAX_RUN_NAME, compose, run_name


def run_dir(*overrides: str) -> Path:
    cfg = compose(["output_root=/out", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return Path(cfg.hydra.run.dir)


def test_a_dozen_ordinary_overrides_give_a_short_deterministic_name():
    overrides = [f"dpo.args.{k}={v}" for k, v in [("learning_rate", 1e-6), ("warmup_steps", 10), ("max_length", 512),
                                                  ("logging_steps", 1), ("num_train_epochs", 3)]]
    overrides += [f"sft.args.{k}={v}" for k, v in [("learning_rate", 2e-5), ("max_length", 512), ("logging_steps", 2)]]
    overrides += ["beta.value=0.2", "seed=3", "eval.num_prompts=16", "model.name_or_path=/" + "very/long/path/" * 20 + "m"]
    first = run_dir(*overrides)
    assert first == run_dir(*overrides) and first.parent == Path("/out/runs")
    assert len(first.name) <= MAX_RUN_NAME and len(first.name.encode()) < 255
    assert first.name.startswith("beta.value=0.2,") and "/" not in first.name
    assert run_dir(*overrides[:-1], "model.name_or_path=/other/m") != first  # the hash tells them apart


def test_path_values_keep_their_last_part_and_never_nest_directories():
    name = run_name("model.name_or_path=/data/models/Qwen2.5-0.5B,beta.value=0.1")
    assert name.startswith("model.name_or_path=Qwen2.5-0.5B-") and name.endswith(",beta.value=0.1")
    assert run_name("model.name_or_path=/a/m") != run_name("model.name_or_path=/b/m")
    assert "/" not in run_name("data.source=../x/../../etc") and not run_name(".hidden=1").startswith(".")


def test_name_names_the_run_and_stays_out_of_the_overrides():
    assert run_dir("name=qwen-lora", "beta.value=0.3") == Path("/out/runs/qwen-lora")
    assert run_dir("name=a/b").name == "a_b"


def test_experiment_names_the_sweep_and_recipe_selects_the_bundle():
    cfg = compose(["experiment=csv"], return_hydra_config=True)
    assert cfg.experiment == "csv" and cfg.hydra.sweep.dir.endswith("sweeps/csv")
    real = compose(["recipe=real_model", "experiment=real"])
    assert real.experiment == "real" and real.dpo.args.learning_rate == 5.0e-7


def test_the_judge_stays_out_of_the_run_name_so_stage_eval_rejudges_a_run_in_place():
    judged = run_dir("beta.value=0.2", "judge=reward_model", "judge.name_or_path=/models/rm", "judge.batch_size=4")
    assert judged == run_dir("beta.value=0.2") == Path("/out/runs/beta.value=0.2")
