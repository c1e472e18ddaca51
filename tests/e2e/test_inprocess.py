"""The whole pipeline in this pytest process, on the smallest sizes (fast tier): compose once, call
train.pipeline.run.run(cfg, ...), check every stage reported. A broken import or wiring fails here in seconds,
before the subprocess tiers (STYLE.md: "one composed fixture, run in-process").
"""

from __future__ import annotations

import json
import os
import signal
from types import SimpleNamespace

import pytest

from helpers.sizes import TINY
from train import seams
from train.config.compose import compose
from train.pipeline.run import run



# Set by `import deepspeed` itself (deepspeed/__init__.py); and the weights-only loading policy, which holds
# for the whole process on purpose (train/runtime/safe_load.py: every later torch.load must obey it).
LIBRARY_ENVIRONMENT = {"PYTORCH_NVML_BASED_CUDA_CHECK", "TORCH_FORCE_WEIGHTS_ONLY_LOAD"}


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """One composed config, run once in-process. Afterwards the environment is put back and accelerate's
    process state forgotten, so the tests after these start from a clean process."""
    root = tmp_path_factory.mktemp("inprocess")
    environ = dict(os.environ)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)}
    try:
        results = run(compose([*TINY, f"output_root={root}"]), root / "runs" / "inprocess", "inprocess")
        changed = {k for k in set(environ) | set(os.environ) if environ.get(k) != os.environ.get(k)}
        restored = {sig: signal.getsignal(sig) == handler for sig, handler in handlers.items()}
        yield SimpleNamespace(run_dir=root / "runs" / "inprocess", results=results, environment_changed=changed,
                              handlers_restored=restored)
    finally:
        os.environ.clear()
        os.environ.update(environ)
        seams.reset_accelerate_state()


def test_every_stage_reports_and_results_json_is_written(pipeline_run):
    run_dir, results = pipeline_run.run_dir, pipeline_run.results
    assert results["sft"]["reused"] is False and "loss" in results["sft"]["train"]
    assert results["dpo"]["steps"] == 2 and "rewards/accuracies" in results["dpo"]["train"]
    assert "loss" in results["dpo"]["held_out"]
    assert results["dpo"]["num_prompts"] == 4 and "kl_to_reference" in results["dpo"]
    assert set(results["runtime_s"]) == {"sft", "dpo", "eval"}
    assert json.loads((run_dir / "results.json").read_text()) == json.loads(json.dumps(results))
    assert (run_dir / "config.yaml").exists() and (run_dir / "policy").is_dir()


def test_the_run_leaves_no_process_state_behind(pipeline_run):
    """Other fast tests run in this process after it: no environment variables, signal handlers, DeepSpeed
    config registered with transformers, or process group left behind."""
    import torch.distributed
    from transformers.integrations.deepspeed import deepspeed_config

    assert pipeline_run.environment_changed <= LIBRARY_ENVIRONMENT, pipeline_run.environment_changed
    assert all(pipeline_run.handlers_restored.values()), pipeline_run.handlers_restored
    assert deepspeed_config() is None
    assert not torch.distributed.is_initialized()
