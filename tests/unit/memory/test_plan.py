"""The memory plan: architecture numbers, DeepSpeed's estimators, a fake-tensor trace of a DPO step,
a real CPU step's RSS, the recommendation for llama3_8b, and the launch check."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
from transformers import LlamaConfig

from helpers.runs import REPO
from train import plan as plan_entry
from train.config.compose import compose
from train.core.errors import ConfigError
from train.memory.architecture import Architecture, count_parameters, from_model_config, transformers_config
from train.memory.estimate import Setting, plan
from helpers.memory_trace import trace_dpo_step
from train.memory.gate import check_memory_plan, memory_gate, memory_problem

MODELS = ("tiny", "qwen2_5_0_5b", "llama3_8b", "mistral_7b")
ARCH_KEYS = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
             "num_key_value_heads", "vocab_size", "tie_word_embeddings")


def arch_of(model: str, layers: int | None = None):
    arch = from_model_config(compose([f"model={model}"]).model)
    if layers is None:
        return arch
    smaller = dataclasses.replace(arch, num_hidden_layers=layers)
    return dataclasses.replace(smaller, num_parameters=count_parameters(
        transformers_config({k: getattr(smaller, k) for k in ARCH_KEYS})))


@pytest.mark.parametrize("model", MODELS)
def test_each_model_group_carries_numbers_that_give_its_published_parameter_count(model):
    arch = arch_of(model)  # raises if model.arch.num_parameters disagrees with the numbers
    assert arch.num_parameters > 0 and arch.num_hidden_layers > 0


def test_arch_numbers_are_checked_against_config_json_on_disk(tmp_path):
    LlamaConfig(num_hidden_layers=3, hidden_size=128, intermediate_size=256, num_attention_heads=4,
                vocab_size=598, tie_word_embeddings=True).save_pretrained(tmp_path)
    cfg = compose(["model=tiny", f"model.name_or_path={tmp_path}"])
    with pytest.raises(ConfigError, match=r"num_hidden_layers=2 \(config.json: 3\)"):
        from_model_config(cfg.model)
    # The tiny model's vocab_size is an upper bound for its fitted tokenizer: 598 <= 1024 is no mismatch.
    LlamaConfig(num_hidden_layers=2, hidden_size=128, intermediate_size=256, num_attention_heads=4,
                vocab_size=598, tie_word_embeddings=True).save_pretrained(tmp_path)
    assert from_model_config(cfg.model).num_hidden_layers == 2


@pytest.mark.parametrize("zero", ["zero2", "zero3", "zero3_offload"])
@pytest.mark.parametrize("gpus_per_node,nodes", [(1, 1), (8, 1), (8, 2)])
def test_model_states_equal_deepspeeds_estimators(zero, gpus_per_node, nodes):
    arch = arch_of("llama3_8b")
    s = Setting(zero, "precomputed", True, 4, 4, 1024, gpus_per_node=gpus_per_node, nodes=nodes)
    memory = plan(arch, s)
    if zero == "zero2":
        _, expected = estimate_zero2_model_states_mem_needs(arch.num_parameters, gpus_per_node, nodes, cpu_offload=False)
    else:
        offload = zero == "zero3_offload"
        _, expected, _ = estimate_zero3_model_states_mem_needs(arch.num_parameters, arch.largest_layer_params,
                                                               gpus_per_node, nodes, cpu_offload=offload,
                                                               cpu_offload_params=offload)
    assert memory.params + memory.grads + memory.optimizer == expected


# (model, layers traced, weight bytes, micro-batch pairs, max_length, gradient checkpointing, reference).
# The 0.5B and 8B configs at max_length 1024 are traced with 2 of their layers in the fast tier (every layer
# is the same; MemTracker's per-op bookkeeping costs 0.5-5 s per layer on 2 busy cores) and the 8B in full in
# the slow tier (the full 0.5B, 24 layers with checkpointing, also passed: 164 s on a loaded machine).
TRACED = [
    pytest.param("tiny", None, 4, 32, 128, False, "precomputed", id="tiny"),
    pytest.param("qwen2_5_0_5b", 2, 2, 2, 1024, False, "model", id="0.5B-2-layers"),
    pytest.param("llama3_8b", 2, 2, 2, 1024, True, "precomputed", id="8B-2-layers-ckpt"),
    pytest.param("llama3_8b", None, 2, 2, 1024, False, "precomputed", id="8B", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("model,layers,weight_bytes,micro_batch,max_length,checkpointing,reference", TRACED)
def test_plan_is_within_15_percent_of_a_traced_dpo_step(model, layers, weight_bytes, micro_batch, max_length,
                                                        checkpointing, reference):
    arch = arch_of(model, layers)
    s = Setting("none", reference, checkpointing, micro_batch, 1, max_length, weight_bytes=weight_bytes,
                triton=False, cuda=False)  # the trace runs on the CPU: TRL's torch fold, no CUDA context
    traced, planned = trace_dpo_step(arch, s), plan(arch, s)
    assert abs(planned.total / traced.peak - 1) <= 0.15, (planned, traced)
    # The parts a formula could get wrong, on their own: everything above the model states (and the reference).
    step = planned.activations + planned.logits
    traced_step = traced.peak - traced.states
    assert abs(step / traced_step - 1) <= 0.15, (planned, traced)


REAL_STEP = """
import json, sys, torch, torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM
from trl.trainer.utils import add_fused_lm_head
from train.core.memory import peak_rss_mb
pairs, length = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(**json.loads(sys.argv[3])))
add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
model.train()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
ids = torch.randint(0, model.config.vocab_size, (2 * pairs, length))
before = peak_rss_mb()
for _ in range(2):  # no zero_grad: the second step runs with gradients and Adam's moments alive, as the plan counts
    logps = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids, fused_lm_head=True,
                  use_cache=False).log_probs.sum(1)
    chosen, rejected = logps.chunk(2)
    F.logsigmoid(0.1 * (chosen - rejected)).neg().mean().backward()
    optimizer.step()
print(json.dumps({"growth_mb": peak_rss_mb() - before, "params": sum(p.numel() for p in model.parameters())}))
"""


@pytest.mark.slow
def test_plan_is_within_25_percent_of_a_real_cpu_steps_peak_rss_growth():
    """A ~23M Llama, fp32, two DPO steps (forward, backward, AdamW) in a fresh process: VmHWM's growth is the
    gradients, Adam's moments, activations and the fused head's buffers of the second."""
    pairs, length = 2, 256
    # A vocabulary of 32768 fills the fused head's tile buffer: with fewer entries, the pages of its unused
    # columns are never touched, so RSS would not count what a GPU allocator does.
    config = {"model_type": "llama", "num_hidden_layers": 6, "hidden_size": 384, "intermediate_size": 1024,
              "num_attention_heads": 6, "num_key_value_heads": 6, "vocab_size": 32768, "tie_word_embeddings": True}
    proc = subprocess.run([sys.executable, "-c", REAL_STEP, str(pairs), str(length),
                           json.dumps({k: v for k, v in config.items() if k != "model_type"})],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured = json.loads(proc.stdout.splitlines()[-1])
    arch = Architecture(**config, num_parameters=measured["params"])
    planned = plan(arch, Setting("none", "precomputed", False, pairs, 1, length, weight_bytes=4, triton=False, cuda=False))
    growth = (planned.grads + planned.optimizer + planned.activations + planned.logits) / 2**20
    assert abs(growth / measured["growth_mb"] - 1) <= 0.25, (growth, measured)


def plan_json(capsys, *argv) -> dict:
    assert plan_entry.main(list(argv)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_llama3_8b_on_8x80gb_recommends_a_fit_and_refuses_zero0_with_a_model_reference(capsys):
    out = plan_json(capsys, "model=llama3_8b", "recipe=real_model", "gpus_per_node=8", "gpu_memory_gb=80")
    assert set(out) == {"given", "recommended", "candidates", "eval", "launch", "host_memory_gb"}
    assert out["eval"]["fits"] and out["eval"]["per_gpu_gb"] > 15  # one whole 8B model per GPU at evaluation
    for entry in [out["given"], out["recommended"], *out["candidates"]]:
        assert set(entry) == {"overrides", "fits", "per_gpu_gb", "host_gb_per_node", "why_not"}
        assert set(entry["per_gpu_gb"]) == {"params", "grads", "optimizer", "reference", "activations", "logits",
                                            "buffers", "total"}
    assert out["recommended"]["fits"] and out["recommended"]["per_gpu_gb"]["total"] <= 80
    zero0_model = [c for c in out["candidates"] if "dpo.reference=model" in c["overrides"]
                   and not any(o.startswith("deepspeed=") for o in c["overrides"])]
    assert zero0_model and not any(c["fits"] for c in zero0_model)


def test_llama3_8b_on_one_24gb_gpu_says_what_fits(capsys):
    out = plan_json(capsys, "model=llama3_8b", "recipe=real_model", "gpus_per_node=1", "gpu_memory_gb=24")
    fitting = [c for c in out["candidates"] if c["fits"]]
    assert not out["given"]["fits"]
    assert out["recommended"] in fitting and fitting, out["recommended"]
    assert "deepspeed=zero3_offload" in out["recommended"]["overrides"] or "dpo.reference=lora" in out["recommended"]["overrides"]


def test_bad_cluster_numbers_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        plan_entry.main(["gpus_per_node=eight"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: gpus_per_node=eight: give a number"


def test_launch_check_names_the_overrides_that_fit():
    cfg = compose(["model=llama3_8b", "recipe=real_model", "dpo.reference=model"])
    problem = memory_problem(cfg, gpus_per_node=8, nodes=1, memory_gb=80)
    assert problem and "\n" not in problem and "deepspeed=" in problem and "plan.check=false" in problem
    assert memory_problem(compose(["model=tiny"]), gpus_per_node=1, nodes=1, memory_gb=80) is None


def test_launch_gate_refuses_with_the_devices_memory_passed_in():
    """The gate the launch runs on a GPU, given an 80 GB device's memory as a number: refusal, one line."""
    cfg = compose(["model=llama3_8b", "recipe=real_model", "dpo.reference=model"])
    with pytest.raises(ConfigError, match=r"needs (8\d|9\d|1\d\d)\.\d GB per GPU, the GPU has 80\.0 GB \(1 node\(s\) x 8 GPU"):
        memory_gate(cfg, gpus_per_node=8, nodes=1, memory_gb=80.0)
    memory_gate(cfg, gpus_per_node=8, nodes=1, memory_gb=200.0)  # fits a larger device: no error
    offload = compose(["model=llama3_8b", "recipe=real_model", "deepspeed=zero3_offload"])
    with pytest.raises(ConfigError, match=r"CPU offload needs 20\d\.\d GB of host RAM per node .* the host has 64\.0 GB"):
        memory_gate(offload, gpus_per_node=1, nodes=1, memory_gb=80.0, host_gb=64.0)
    memory_gate(offload, gpus_per_node=1, nodes=1, memory_gb=80.0, host_gb=512.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_launch_check_does_nothing_without_a_gpu():
    check_memory_plan(compose(["model=llama3_8b", "recipe=real_model", "dpo.reference=model"]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the launch check reads its memory")
def test_launch_check_on_a_real_gpu_refuses_a_config_no_gpu_holds():
    device_gb = torch.cuda.get_device_properties(0).total_memory / 2**30
    cfg = compose(["model=llama3_8b", "recipe=real_model", "dpo.reference=model", "dpo.args.max_length=8192",
                   "dpo.args.gradient_checkpointing=false"])  # activations alone: hundreds of GB
    with pytest.raises(ConfigError, match=rf"the GPU has {device_gb:.1f} GB"):
        check_memory_plan(cfg)
    check_memory_plan(compose(["model=tiny"]))  # the tiny model fits any GPU


def test_evaluation_memory_is_planned_and_a_gpu_it_cannot_fit_stops_the_launch():
    """Evaluation holds one whole model per GPU (ZeRO does not shard it): 8B in bf16 is 15 GiB of weights alone."""
    from train.memory.candidates import eval_memory
    from train.memory.gate import eval_problem

    cfg = compose(["model=llama3_8b", "recipe=real_model"])
    planned = eval_memory(cfg, 80)
    assert planned["fits"] and 16 < planned["per_gpu_gb"] < 40  # weights 15.0 + KV cache + logits + context
    problem = eval_problem(cfg, 16)
    assert problem and "\n" not in problem and "eval.batch_size" in problem and "eval.enabled=false" in problem
    smaller = eval_memory(compose(["model=llama3_8b", "recipe=real_model", "eval.batch_size=1"]), 80)
    assert smaller["per_gpu_gb"] < planned["per_gpu_gb"]
    assert eval_memory(compose(["model=llama3_8b", "eval.enabled=false"]), 80) is None



def test_plan_prints_the_launch_command_with_its_process_count():
    from train.memory.report import launch_command

    assert launch_command([], 1, 1) == "make train"
    assert launch_command(["deepspeed=zero3", "+dpo.args.x=1"], 8, 1) == 'make train NPROC=8 ARGS="deepspeed=zero3 +dpo.args.x=1"'
    assert launch_command(["deepspeed=zero3"], 8, 2) == 'make submit NODES=2 NPROC_PER_NODE=8 ARGS="deepspeed=zero3"'
    assert launch_command(["experiment=a$b"], 2, 1) == "make train NPROC=2 ARGS='experiment=a$b'"  # no expansion


def test_plan_cli_launch_line_for_one_and_two_nodes(capsys):
    out = plan_json(capsys, "model=llama3_8b", "recipe=real_model", "gpus_per_node=8", "gpu_memory_gb=80")
    overrides = " ".join(out["recommended"]["overrides"])
    assert out["launch"] == f'make train NPROC=8 ARGS="{overrides}"'
    assert plan_json(capsys, "model=llama3_8b", "recipe=real_model", "gpus_per_node=8", "nodes=2",
                     "gpu_memory_gb=80")["launch"].startswith("make submit NODES=2 NPROC_PER_NODE=8 ARGS=")
    assert_prints(capsys, ["model=llama3_8b", "recipe=real_model", "gpus_per_node=8", "gpu_memory_gb=80"],
                  f"launch: make train NPROC=8 ARGS=\"{overrides}\"  (8 processes: 1 node(s) x 8 GPU(s))")


def assert_prints(capsys, argv: list[str], *lines: str) -> str:
    assert plan_entry.main(argv) == 0
    text = capsys.readouterr().out
    for line in lines:
        assert line in text.splitlines(), (line, text[-3000:])
    return text


def test_cpu_offload_needs_host_memory_per_node_and_is_refused_where_the_host_cannot_hold_it(capsys):
    from train.memory.estimate import host_bytes_per_node

    arch = arch_of("llama3_8b")
    for nodes in (1, 2):
        s = Setting("zero3_offload", "precomputed", True, 4, 4, 1024, gpus_per_node=8, nodes=nodes)
        cpu, _, _ = estimate_zero3_model_states_mem_needs(arch.num_parameters, arch.largest_layer_params, 8, nodes,
                                                          cpu_offload=True, cpu_offload_params=True)
        assert host_bytes_per_node(arch, s) == cpu  # DeepSpeed's own figure: 18 bytes/param x 1.5, over the nodes
    assert host_bytes_per_node(arch, dataclasses.replace(s, zero="zero3")) == 0
    argv = ["model=llama3_8b", "recipe=real_model", "gpus_per_node=1", "gpu_memory_gb=24"]
    small = plan_json(capsys, *argv, "host_memory_gb=64")
    offload = [c for c in small["candidates"] if "deepspeed=zero3_offload" in c["overrides"]
               and not any(o.startswith("dpo.reference=") for o in c["overrides"])]
    assert offload and all(not c["fits"] and 200 < c["host_gb_per_node"] < 205 for c in offload)
    assert all("of host RAM per node" in c["why_not"] and "the host has 64.0 GB" in c["why_not"] for c in offload)
    text = assert_prints(capsys, [*argv, "host_memory_gb=64"])
    assert sum(line.startswith("refused: ") and "zero3_offload" in line for line in text.splitlines()) >= 2
    large = plan_json(capsys, *argv, "host_memory_gb=512")
    assert "deepspeed=zero3_offload" in large["recommended"]["overrides"] and large["host_memory_gb"] == 512
    assert "dpo.reference=lora" not in large["recommended"]["overrides"]


def test_host_memory_defaults_to_this_machines(capsys):
    with open("/proc/meminfo") as f:
        total_kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    out = plan_json(capsys, "model=tiny")
    assert out["host_memory_gb"] == round(total_kb / 2**20, 2)


def test_plan_says_why_a_fitting_lora_row_is_or_is_not_the_recommendation(capsys):
    text = assert_prints(capsys, ["model=llama3_8b", "recipe=real_model", "gpus_per_node=8", "gpu_memory_gb=80"])
    (note,) = [line for line in text.splitlines() if line.startswith("not LoRA: ")]
    assert "trains only adapters (a different result); recommended full fine-tuning since it fits" in note
    assert "less memory (" in note
    # One 24 GB GPU whose host cannot hold the offloaded 8B: no full fine-tuning fits, LoRA is the recommendation.
    out = plan_json(capsys, "model=llama3_8b", "recipe=real_model", "gpus_per_node=1", "gpu_memory_gb=24",
                    "host_memory_gb=16")
    assert "dpo.reference=lora" in out["recommended"]["overrides"]
    assert_prints(capsys, ["model=llama3_8b", "recipe=real_model", "gpus_per_node=1", "gpu_memory_gb=24",
                           "host_memory_gb=16"],
                  "LoRA recommended: no full fine-tuning fits; LoRA trains adapters on a frozen base, a different "
                  "result from full fine-tuning")
