"""Tier 1: every option of every config group composes and validates; bad config gives one line."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from helpers.runs import refused_at_start
from train.config.compose import CONFIG_DIR, compose
from train.config.choices import Stage
from helpers.trainer_config import trl_config
from train.config.validate import single_process_view
from train.core.errors import ConfigError
from train.memory.offload import check_offload_memory
from train.pipeline.checks import check_config

CONF = Path(CONFIG_DIR)
REPO = CONF.parent


def group_options():
    """(group, option) for every yaml on disk: new options are covered without editing this file."""
    for group_dir in sorted(p for p in CONF.iterdir() if p.is_dir()):
        for option in sorted(group_dir.glob("*.yaml")):
            yield group_dir.name, option.stem


def compose_cfg(*overrides: str):
    return compose(list(overrides))


@pytest.mark.parametrize("group,option", list(group_options()))
def test_every_group_option_composes_and_validates(group, option):
    cfg = compose_cfg(f"{group}={option}")
    check_config(cfg)  # the whole start-up check, as `python -m train` runs it


def test_a_flash_attention_that_is_not_installed_is_refused_at_start(monkeypatch):
    """transformers raises it as an ImportError traceback once the weights load; we say it before anything runs."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real(name, *a))
    with pytest.raises(ConfigError, match="model.attn_implementation=flash_attention_2 needs the flash_attn package, "
                                          "which is not installed; install it where the job runs, or use "
                                          "model.attn_implementation=sdpa"):
        check_config(compose_cfg("model.attn_implementation=flash_attention_2"))


def test_an_attention_the_model_class_does_not_implement_is_refused_at_start(tmp_path):
    """Gemma2 has no sdpa: transformers raised a ValueError traceback when TRL loaded it; read from config.json."""
    from transformers import AutoConfig

    AutoConfig.for_model("gemma2", hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=16, vocab_size=64).save_pretrained(tmp_path)
    local = (f"model.name_or_path={tmp_path}", "model.tiny=null", "model.arch=null")
    with pytest.raises(ConfigError, match=r"model.attn_implementation=sdpa: Gemma2ForCausalLM does not implement it "
                                          r"in transformers [0-9.]+; use model.attn_implementation=eager$"):
        check_config(compose_cfg(*local))
    check_config(compose_cfg(*local, "model.attn_implementation=eager"))


# "auto" values DeepSpeed's config keeps until the model is known (transformers fills them from its hidden size).
MODEL_SIZED = {"reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"}


def auto_keys(node, where=""):
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in auto_keys(value, f"{where}.{key}" if where else key)]
    return [where] if node == "auto" else []


@pytest.mark.parametrize("stage", ["zero1", "zero2", "zero3", "zero3_offload"])
def test_deepspeed_group_produces_trainer_config(stage, tmp_path):
    """The real DPOConfig, DeepSpeed dict included, built as validation builds it: the stage reaches
    transformers' DeepSpeed config and accelerate's plugin, and the "auto" values are filled from the
    trainer arguments (non-default ones here, so a value left at its default cannot pass by chance)."""
    cfg = compose_cfg(f"deepspeed={stage}", "beta.value=0.3", "dpo.args.per_device_train_batch_size=7",
                      "dpo.args.gradient_accumulation_steps=3", "++dpo.args.max_grad_norm=0.25")
    env_before = dict(os.environ)
    with single_process_view():
        args = trl_config(cfg, Stage.dpo, tmp_path)
    assert dict(os.environ) == env_before  # building it left no environment variables behind
    assert args.beta == 0.3
    assert args.deepspeed == OmegaConf.to_container(cfg.deepspeed.config, resolve=True)
    ds = args.hf_deepspeed_config
    assert ds.get_value("zero_optimization.stage") == cfg.deepspeed.stage
    assert ds.is_zero3() == (cfg.deepspeed.stage == 3)
    assert args.deepspeed_plugin.zero_stage == cfg.deepspeed.stage
    assert ds.get_value("train_micro_batch_size_per_gpu") == args.per_device_train_batch_size == 7
    assert ds.get_value("gradient_accumulation_steps") == args.gradient_accumulation_steps == 3
    assert ds.get_value("gradient_clipping") == args.max_grad_norm == 0.25
    assert ds.get_value("bf16.enabled") is args.bf16 is False and ds.get_value("fp16.enabled") is False
    assert ds.get_value("train_batch_size") is None  # world size is known only at run time
    assert {key.rsplit(".", 1)[-1] for key in auto_keys(ds.config)} <= MODEL_SIZED
    offload = "cpu" if stage == "zero3_offload" else "none"
    assert (args.deepspeed_plugin.offload_param_device, args.deepspeed_plugin.offload_optimizer_device) == (offload, offload)
    no_ds = trl_config(compose_cfg("deepspeed=none"), Stage.dpo, tmp_path)
    assert no_ds.deepspeed is None and no_ds.deepspeed_plugin is None


def test_trainer_args_pass_through_to_trl():
    cfg = compose_cfg("dpo.args.learning_rate=0.5", "beta.value=0.3", "sft.args.max_length=64")
    dpo = trl_config(cfg, Stage.dpo, Path("/tmp/x"))
    sft = trl_config(cfg, Stage.sft, Path("/tmp/x"))
    assert (dpo.learning_rate, dpo.beta, sft.max_length) == (0.5, 0.3, 64)
    assert dpo.bf16 is False  # CPU: TRL's bf16=True default is switched off unless asked for


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["+dpo.args.learnig_rate=0.1"], "dpo.args.learnig_rate: not a DPOConfig setting; did you mean dpo.args.learning_rate?"),
        (["+sft.args.beta=0.1"], "sft.args.beta: set beta with the beta group"),
        (["beta.value=0"], "beta.value=0.0: beta must be > 0"),
        (["beta.value=-0.1"], "beta.value=-0.1: beta must be > 0"),
        (["beta=linear", "beta.final=null"], "beta.final is required by beta=linear"),
        (["model=qwen2_5_0_5b", "model.name_or_path=/no/such/model"], "model.name_or_path=/no/such/model: no such directory"),
        (["deepspeed=zero2", "deepspeed.stage=3"], "deepspeed.config.zero_optimization.stage=2 but deepspeed.stage=3"),
        (["stage=everything"], None),  # an Enum: refused at composition (tests/test_choices.py)
        (["+wandb.api_key=abc"], "wandb.api_key: secrets must not be in the config"),
        (["+dpo.args.hub_token=abc"], "dpo.args.hub_token: secrets must not be in the config"),
        (["dpo.args.lr_scheduler_type=sometimes"], "dpo.args: DPOConfig rejected the settings"),
    ],
)
def test_config_errors_name_the_key(overrides, message):
    try:
        cfg = compose_cfg(*overrides)
    except Exception as err:  # schema-level rejection (unknown key) happens at composition
        assert message is None, f"composition failed unexpectedly: {err}"
        return
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert message is not None and message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "args,expected",
    [
        (["model=nosuchmodel"], "model is a config group (options: llama3_8b, mistral_7b, qwen2_5_0_5b, tiny); choose one, or add conf/model/nosuchmodel.yaml"),
        (["dpo.args.learning_rate=0.1", "nosuchkey=1"], "error: nosuchkey: not a key of the config"),
        (["beta.value=-1"], "error: beta.value=-1.0: beta must be > 0 (typical 0.05-0.5)"),
        (["+dpo.args.learnig_rate=1"], "error: dpo.args.learnig_rate: not a DPOConfig setting; did you mean dpo.args.learning_rate?"),
        (["-m", "--cfg", "hydra"], "error: -m cannot be combined with --cfg or --info (Hydra runs one mode at a time)"),
    ],
)
def test_command_line_errors_are_one_line_without_traceback(args, expected, tmp_path):
    proc = refused_at_start(f"output_root={tmp_path}", *args)
    assert proc.returncode != 0
    err_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err_lines) == 1 and expected in err_lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # a failed start writes no run directory


def test_cfg_job_prints_composed_config():
    proc = subprocess.run([sys.executable, "-m", "train", "--cfg", "job", "beta.value=0.25"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "value: 0.25" in proc.stdout and "zero_optimization" not in proc.stdout


def run_and_sweep_dirs(*overrides: str) -> tuple[str, str]:
    """The directory a run with these overrides writes to, and its sweep sub-directory, as Hydra resolves them."""
    cfg = compose(["output_root=/out", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg.hydra.run.dir, cfg.hydra.sweep.subdir


def test_run_directory_is_deterministic_and_excludes_bookkeeping_keys():
    """Every process of a job, and a restarted job, must land in the same directory: composing twice
    (a second apart: a clock in the name would show) gives the same one; another setting gives another;
    keys that do not change what is computed leave it unchanged."""
    first = run_and_sweep_dirs("beta.value=0.5")
    time.sleep(1.1)
    assert run_and_sweep_dirs("beta.value=0.5") == first
    assert first == ("/out/runs/beta.value=0.5", "beta.value=0.5")
    assert run_and_sweep_dirs("beta.value=0.2")[0] != first[0]
    assert run_and_sweep_dirs("beta.value=0.5", "seed=1")[0] != first[0]
    bookkeeping = ("stage=sft", "dry_run=true", "wandb.mode=disabled", "experiment=other", "nproc_per_node=2",
                   "wandb.project=p", "wandb.group=g")
    assert run_and_sweep_dirs("beta.value=0.5", *bookkeeping) == first
    assert run_and_sweep_dirs()[0] == "/out/runs/default"
    run_dir, subdir = run_and_sweep_dirs("model.name_or_path=/a/b")  # a path in an override nests no directories
    assert Path(run_dir).parent == Path("/out/runs") and "/" not in subdir


def test_offload_that_cannot_fit_is_refused(tmp_path):
    """A 70B-sized config (no weights: counted on the meta device) needs ~1.1 TB of host memory under the
    zero3_offload preset (16 bytes per parameter, split over the machines); the presets themselves are
    what is checked, so a preset that stopped offloading (or a check that stopped reading it) fails here."""
    import re

    from transformers import LlamaConfig

    big, small = tmp_path / "big", tmp_path / "small"
    LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=128256).save_pretrained(big)
    LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                vocab_size=32).save_pretrained(small)
    preset = {name: OmegaConf.to_container(compose_cfg(f"deepspeed={name}").deepspeed.config, resolve=True)
              for name in ("zero3_offload", "zero3")}
    for machines in (1, 4):
        with pytest.raises(ConfigError, match=r"deepspeed=zero3_offload needs ~\d+\.\d GiB .* 70\.55B parameters") as err:
            check_offload_memory(preset["zero3_offload"], str(big), False, num_machines=machines)
        needed = float(re.search(r"needs ~(\d+\.\d) GiB", str(err.value)).group(1))
        assert needed == pytest.approx(70.55e9 * 16 / 2**30 / machines, rel=1e-3)
    check_offload_memory(preset["zero3_offload"], str(small), False, num_machines=1)  # fits: no error
    check_offload_memory(preset["zero3"], str(big), False, num_machines=1)  # no offload: no check
