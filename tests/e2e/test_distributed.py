"""Tier 4: real multi-process runs on CPU (2 processes over gloo), DeepSpeed ZeRO-2/3, DDP."""

import psutil
import pytest
import torch

from helpers.runs import read_results, run_train

pytestmark = pytest.mark.multiproc
FAST = ("debug=fast",)


@pytest.fixture(scope="module")
def output_root(tmp_path_factory):
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="module")
def zero3_run(output_root):
    # reference=model (not the default, precomputed): this run checks that ZeRO-3 partitions the reference too.
    # fresh: a real `accelerate launch` and its elastic agent, not the tests' forked ranks (helpers/warm.py).
    return read_results(run_train(*FAST, "deepspeed=zero3", "dpo.reference=model", output_root=output_root, nproc=2,
                                  fresh=True))


def total_params(path) -> int:
    from transformers import AutoModelForCausalLM

    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(path).parameters())


def test_zero3_partitions_policy_and_reference_across_ranks(zero3_run):
    dist = zero3_run["distributed"]
    assert (dist["world_size"], dist["num_machines"], dist["zero_stage"], dist["reference"]) == (2, 1, 3, "model")
    total = total_params(zero3_run["dpo"]["policy_path"])
    assert [r["rank"] for r in dist["ranks"]] == [0, 1]
    for rank in dist["ranks"]:
        for key in ("policy_params_local", "reference_params_local"):
            assert abs(rank[key] / total - 0.5) <= 0.05, (key, rank[key], total)  # half, within 10%
        # Each rank's own high-water mark (VmHWM; tests/test_memory.py checks the figure itself): a process
        # that imported torch and DeepSpeed and trained holds a few hundred MB, less than the machine has.
        assert 300 < rank["peak_rss_mb"] < psutil.virtual_memory().total / 2**20, rank
    assert zero3_run["dpo"]["train"]["rewards/accuracies"] > 0.6


def test_zero3_consolidated_save_loads_on_one_process_and_generates(zero3_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = zero3_run["dpo"]["policy_path"]
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert sum(p.numel() for p in model.parameters()) == total_params(zero3_run["dpo"]["reference_path"])
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "write a review of the comedy set in paris"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    assert zero3_run["dpo"]["judge_reward"] > zero3_run["sft"]["judge_reward"]  # eval loaded it too


def test_zero2_with_precomputed_reference(output_root, zero3_run):
    results = read_results(run_train(*FAST, "deepspeed=zero2", "dpo.reference=precomputed", "eval.enabled=false",
                                     output_root=output_root, nproc=2))
    dist = results["distributed"]
    assert (dist["world_size"], dist["zero_stage"], dist["reference"]) == (2, 2, "precomputed")
    total = total_params(results["dpo"]["policy_path"])
    for rank in dist["ranks"]:
        assert rank["reference_params_local"] == 0  # no reference model in memory while training
        assert rank["policy_params_local"] == total  # ZeRO-2 replicates parameters
    assert results["dpo"]["train"]["rewards/accuracies"] > 0.6


def test_ddp_with_lora_reference(output_root, zero3_run):
    results = read_results(run_train(*FAST, "dpo.reference=lora", "eval.enabled=false", output_root=output_root, nproc=2))
    dist = results["distributed"]
    assert (dist["world_size"], dist["zero_stage"], dist["reference"]) == (2, 0, "lora")
    assert all(rank["reference_params_local"] == 0 for rank in dist["ranks"])  # adapters off = reference
    assert results["dpo"]["train"]["rewards/accuracies"] > 0.6


# 4 steps of 16 pairs from the base model: exactly the 64 pairs the runs read.
PARITY = (*FAST, "sft.enabled=false", "eval.enabled=false", "data.synthetic.num_pairs=64", "+dpo.args.max_steps=4",
          "dpo.args.logging_steps=1", "dpo.args.warmup_steps=0")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The one-process run both parity tests compare against."""
    root = tmp_path_factory.mktemp("one_process")
    return read_results(run_train(*PARITY, "dpo.args.per_device_train_batch_size=16", output_root=root))


@pytest.mark.parametrize("deepspeed", ["zero3", "none"])
def test_two_processes_match_one_process_at_the_same_global_batch(one_process, tmp_path, deepspeed):
    """Same seed, same global batch (1 x 16 vs 2 x 8): same data per step, so the same loss and rewards.
    With deepspeed=none this is plain DDP over gloo: it fails if gradients are not all-reduced.

    Tolerance: rel 1e-4 / abs 1e-5. fp32 sums over the batch are split across ranks and all-reduced in a
    different order than one process sums them; that reordering moves values at the ~1e-6 level.
    """
    one = one_process
    two = read_results(run_train(*PARITY, "dpo.args.per_device_train_batch_size=8", f"deepspeed={deepspeed}",
                                 output_root=tmp_path / "two", nproc=2))
    keys = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "grad_norm")
    h1, h2 = one["dpo"]["history"], two["dpo"]["history"]
    assert [e["step"] for e in h1] == [e["step"] for e in h2] == [1, 2, 3, 4]
    assert h1[-1]["rewards/margins"] != 0.0  # the steps really trained
    for e1, e2 in zip(h1, h2):
        for key in keys:
            assert e2[key] == pytest.approx(e1[key], rel=1e-4, abs=1e-5), (e1["step"], key, e1[key], e2[key])
