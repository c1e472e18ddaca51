"""LoRA for SFT (sft.lora) and merged full weights of a LoRA policy (dpo.lora.merge): refusals at
start, the SFT key, merged logits equal base + adapter, and adapters that still load after their run
directory moves. Logits are compared in fp32 with atol 1e-5: merging only re-associates W x + B A x, so the
difference is float rounding (measured: max 5.4e-7 for the SFT model, 5.7e-7 for the DPO policy, in a 2-process
ZeRO-3 run whose adapters moved the logits by up to 0.95 and 0.20)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel, get_peft_model
from helpers.runs import process_state_restored, start_check_refusal
from helpers.sizes import TINY
from transformers import AutoModelForCausalLM

from train.config.compose import compose
from train.core.errors import ConfigError
from train.models.adapters import (ADAPTER_CONFIG, ADAPTER_DIR, base_model_of, check_target_modules, lora_config,
                                   merge_adapter, pin_base_model)
from train.models.loading import ensure_base_model, load_model
from train.pipeline.run import run
from train.pipeline.sft import sft_output_dir
from helpers.typed import typed

REPO = Path(__file__).resolve().parents[3]
ATOL = 1e-5
TOKENS = torch.arange(3, 40).unsqueeze(0)  # any ids below the tiny vocabulary (300)


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=TOKENS).logits


def assert_same_logits(model, expected: torch.Tensor) -> None:
    torch.testing.assert_close(logits(model), expected, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny base model of test_inprocess's sizes, built once for this module (under a second)."""
    root = tmp_path_factory.mktemp("lora")
    cfg = compose([*TINY, f"output_root={root}"])
    return cfg, ensure_base_model(typed(cfg).model)


@pytest.mark.parametrize("overrides,message", [
    (["sft.enabled=false", "sft.lora.enabled=true"], "sft.lora.enabled=true but sft.enabled=false"),
    (["dpo.lora.merge=true"], "dpo.lora.merge=true but dpo.reference=precomputed: only a LoRA policy"),
    (["sft.lora.enabled=true", "sft.lora.r=0"], "sft.lora: r=0, alpha=32, dropout=0.05: need r >= 1"),
    (["dpo.reference=lora", "dpo.lora.target_modules=[]"], "dpo.lora.target_modules is empty"),
])
def test_bad_lora_settings_are_refused_in_one_line(overrides, message):
    assert message in start_check_refusal(overrides)


def test_merge_without_lora_exits_2_with_one_line_and_writes_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train", f"output_root={tmp_path}", "dpo.lora.merge=true"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "dpo.lora.merge=true" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []


def test_a_misspelt_target_module_is_refused_before_training(tiny):
    cfg, base = tiny
    check_target_modules(typed(compose([*TINY, "sft.lora.enabled=true", "dpo.reference=lora"])), base)  # the defaults fit
    with pytest.raises(ConfigError, match=r"^dpo\.lora\.target_modules: q_prj not in .*; its linear layers: .*q_proj"):
        check_target_modules(typed(compose([*TINY, "dpo.reference=lora", "dpo.lora.target_modules=[q_proj,q_prj]"])), base)


def test_sft_key_follows_lora_settings_only_when_lora_is_on():
    key = lambda *o: sft_output_dir(typed(compose(["output_root=/nonexistent", *o]))).name  # noqa: E731
    assert key() == key("sft.lora.r=4")  # unused settings: full fine-tuning keeps its key (and its trained model)
    assert len({key(), key("sft.lora.enabled=true"), key("sft.lora.enabled=true", "sft.lora.r=4")}) == 3


def test_all_linear_reaches_peft_as_its_shorthand():
    spec = compose(["dpo.lora.target_modules=[all-linear]"]).dpo.lora
    assert lora_config(spec).target_modules == "all-linear"


def test_merged_adapter_equals_base_plus_adapter_and_loads_after_a_move(tiny, tmp_path, monkeypatch):
    cfg, base = tiny
    # Random B (peft's default B = 0 would make the adapter a no-op and the comparison vacuous).
    spec = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), spec)
    policy = tmp_path / "run" / "policy"
    peft_model.save_pretrained(policy / ADAPTER_DIR)
    monkeypatch.chdir(Path(base).parent.parent)  # a relative base, as TRL writes it when SFT is off
    pin_base_model(policy / ADAPTER_DIR, os.path.relpath(base), None)
    pinned = json.loads((policy / ADAPTER_DIR / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    assert pinned == str(Path(base).resolve())
    merge_adapter(policy / ADAPTER_DIR, policy, cfg.model)

    expected = logits(peft_model)
    assert not torch.allclose(expected, logits(AutoModelForCausalLM.from_pretrained(base)), atol=1e-3)
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(tmp_path / "run", moved)
    monkeypatch.chdir(tmp_path)
    assert_same_logits(AutoModelForCausalLM.from_pretrained(moved / "policy"), expected)
    assert_same_logits(AutoPeftModelForCausalLM.from_pretrained(moved / "policy" / ADAPTER_DIR), expected)
    assert_same_logits(load_model(cfg.model, str(moved / "policy" / ADAPTER_DIR)), expected)


def test_an_adapter_whose_base_is_gone_is_one_line(tmp_path):
    (tmp_path / ADAPTER_CONFIG).write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(ConfigError, match=r"^LoRA adapter .*: its base model .*gone is gone \(moved or deleted\?\)"):
        base_model_of(tmp_path)
    (tmp_path / ADAPTER_CONFIG).write_text('{"base_model_name_or_pa')  # cut short
    with pytest.raises(ConfigError, match=rf"^{tmp_path / ADAPTER_CONFIG} is damaged \(.*\): restore it"):
        base_model_of(tmp_path)
    (tmp_path / ADAPTER_CONFIG).write_text('{"r": 8}')  # edited: no base
    with pytest.raises(ConfigError, match=r"adapter_config.json names no base model"):
        base_model_of(tmp_path)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """SFT with LoRA, then DPO with reference=lora and a merged policy, in-process on the tiny sizes."""
    root = tmp_path_factory.mktemp("lora_run")
    # No warmup: the first steps move the adapters (B starts at 0), so base + adapter differs from the base.
    cfg = compose([*TINY, f"output_root={root}", "sft.lora.enabled=true", "dpo.reference=lora", "dpo.lora.merge=true",
                   "sft.args.warmup_steps=0", "dpo.args.warmup_steps=0"])
    with process_state_restored():
        results = run(cfg, root / "runs" / "lora", "lora")
        yield cfg, root, results


@pytest.mark.slow
def test_sft_with_lora_publishes_merged_weights_equal_to_base_plus_adapter(lora_run):
    cfg, root, results = lora_run
    sft_dir = sft_output_dir(typed(cfg))
    assert results["sft"]["steps"] == 2 and (sft_dir / "model.safetensors").is_file()
    adapter = sft_dir / ADAPTER_DIR
    base = AutoModelForCausalLM.from_pretrained(base_model_of(adapter)[0])
    base_plus_adapter = PeftModel.from_pretrained(base, adapter)
    merged = logits(AutoModelForCausalLM.from_pretrained(sft_dir))
    assert_same_logits(base_plus_adapter, merged)
    with base_plus_adapter.disable_adapter():  # trained: the adapter is not a no-op
        assert not torch.allclose(merged, logits(base_plus_adapter), atol=1e-4)


@pytest.mark.slow
def test_merged_lora_policy_equals_its_adapter_and_loads_after_the_run_dir_moves(lora_run, tmp_path, monkeypatch):
    cfg, root, results = lora_run
    assert "kl_to_reference" in results["dpo"]  # evaluation ran on the merged policy
    moved = tmp_path / "moved"
    shutil.copytree(root / "runs" / "lora", moved)  # a copy: the other test reads the original
    monkeypatch.chdir(tmp_path)
    merged = logits(AutoModelForCausalLM.from_pretrained(moved / "policy"))
    assert_same_logits(AutoPeftModelForCausalLM.from_pretrained(moved / "policy" / ADAPTER_DIR), merged)
    assert_same_logits(load_model(cfg.model, str(moved / "policy")), merged)
    assert not torch.allclose(merged, logits(AutoModelForCausalLM.from_pretrained(sft_output_dir(typed(cfg)))), atol=1e-4)
