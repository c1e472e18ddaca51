"""dpo.batching layouts: the same numbers as TRL's padded batch, in less work.

Fast: the layout's geometry and mask; per-token log-probs, entropy, logits and top-1 flags of packed and
prefix_shared against padded, with gradients, for Llama, Qwen2, Qwen3, Mistral and Phi-3 with sdpa and eager (tiny
random models, fp32);
every TRL loss type from the same batch; 20-step runs (a beta schedule on) whose per-step losses and logged
rewards/logps/logits metrics equal padded's, with the reference as a model, precomputed (same cache key) and LoRA;
exact resume. Tolerance: rel 1e-5 for one forward (measured: max 1e-7), rel 1e-4 after 20 optimizer steps (fp32
rounding of a different summation order, grown by AdamW).
"""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
from datasets import Dataset
from omegaconf import OmegaConf
from peft import LoraConfig
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import add_fused_lm_head

from helpers.runs import assert_same_run, read_results, run_train
from train.config.compose import compose
from train.config.trainer_args import dpo_loss_types
from train.core.errors import ConfigError
from train.models.tiny import build_tiny_model
from train.trainer import layouts, logps
from train.trainer.beta import BetaSchedule
from train.trainer.builders import release
from train.trainer.dpo import ProjectDPOTrainer
from train.trainer.reference_cache import digest, key_parts

VOCAB = 300
FORWARD_RTOL = 1e-5
RUN_RTOL = 1e-4


def random_pairs(count: int, seed: int) -> list[dict]:
    """Pre-tokenized pairs of mixed lengths; some responses share their first tokens, one pair is identical."""
    g = torch.Generator().manual_seed(seed)

    def ids(low, high):
        return torch.randint(7, VOCAB, (int(torch.randint(low, high, (1,), generator=g)),), generator=g).tolist()

    rows = []
    for i in range(count):
        chosen, rejected = ids(1, 12), ids(1, 12)
        if i % 3 == 1:
            rejected = chosen[:2] + rejected
        rows.append({"prompt_ids": ids(2, 24), "chosen_ids": chosen, "rejected_ids": chosen if i == 5 else rejected})
    return rows


WORDS = "a great wonderful terrible boring film plot review of the actors music was and but".split()


def text_pairs(count: int, seed: int) -> list[dict]:
    """Text pairs of mixed lengths for the trainer (TRL tokenizes them); some responses start alike."""
    g = torch.Generator().manual_seed(seed)

    def words(low, high):
        n = int(torch.randint(low, high, (1,), generator=g))
        return " " + " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (n,), generator=g))

    rows = []
    for i in range(count):
        chosen, rejected = words(1, 10), words(1, 10)
        rows.append({"prompt": "review" + words(2, 20), "chosen": chosen,
                     "rejected": chosen.split(" ", 2)[1] + rejected if i % 3 == 1 else rejected})
    return rows


def padded_batch(rows: list[dict]) -> dict:
    batch = DataCollatorForPreference(pad_token_id=0)(rows)
    batch["labels"] = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    return batch


# --- geometry and choice -------------------------------------------------------------------------------


def test_prefix_shared_lays_each_prompt_out_once_and_hides_chosen_from_rejected():
    rows = [{"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10]},
            {"prompt_ids": [5], "chosen_ids": [11, 12, 13, 14], "rejected_ids": [15, 16]}]
    batch = padded_batch(rows)
    layout = layouts.build("prefix_shared", batch["input_ids"], batch["attention_mask"], batch["labels"])
    # rows as long as the longest triple (7); the shorter triple does not fit beside it
    assert layout.input_ids.tolist() == [[5, 11, 12, 13, 14, 15, 16], [5, 6, 7, 8, 9, 10, 0]]
    assert layout.num_tokens == 14 < batch["input_ids"].numel() == 20
    assert layout.position_ids.tolist() == [[0, 1, 2, 3, 4, 1, 2], [0, 1, 2, 3, 4, 3, 0]]  # rejected restarts
    mask = layout.attention_mask("bool", torch.float32)[:, 0]
    assert mask[0, 5].tolist() == [True, False, False, False, False, True, False]  # rejected: prompt, itself
    assert mask[1, 5].tolist() == [True, True, True, False, False, True, False]
    assert mask[1, 6].tolist() == [False] * 6 + [True]  # padding sees only itself: no empty row (NaN in sdpa)
    scored = (batch["labels"][:, 1:] != -100).sum().item()
    assert len(layout.dest) == scored == len(set(layout.dest.tolist()))
    # each scored token's predecessor, in TRL's row order (chosen rows, then rejected rows)
    assert layout.input_ids.view(-1)[layout.source].tolist() == [7, 8, 5, 11, 12, 13, 7, 5, 15]
    assert layout.target.tolist() == [8, 9, 11, 12, 13, 14, 10, 15, 16]
    additive = layout.attention_mask("additive", torch.bfloat16)[0, 0]
    assert additive.dtype == torch.bfloat16 and additive[5, 0] == 0
    assert additive[5, 1] == torch.finfo(torch.bfloat16).min


def test_rows_hold_several_short_units_but_never_exceed_the_longest():
    assert layouts.pack_rows([10, 4, 3, 6, 2]) == [[0], [3, 1], [2, 4]]
    assert layouts.shared_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert layouts.shared_prefix_length([1, 2], [1, 2]) == 2


@pytest.mark.parametrize("requested, model_type, attn, expected", [
    ("auto", "llama", "sdpa", ("prefix_shared", None)),
    ("auto", "qwen2", "eager", ("prefix_shared", None)),
    ("packed", "llama", "sdpa", ("packed", None)),
    ("padded", "mistral", "flash_attention_2", ("padded", None)),
    ("auto", "llama", "flash_attention_2",
     ("packed", "dpo.batching=auto: using packed, since prefix_shared: attn_implementation=flash_attention_2 takes "
                "sequence boundaries, not the 4D mask prefix sharing needs (packed works with it; prefix_shared with "
                "sdpa or eager)")),
    ("packed", "qwen2", "flash_attention_3", ("packed", None)),
    ("auto", "llama", "flex_attention",
     ("padded", "dpo.batching=auto: using padded, since attn_implementation=flex_attention takes neither a 4D mask "
                "nor packed position ids (supported: sdpa, eager, flash_attention_2, flash_attention_3)")),
    ("auto", "gemma2", "sdpa", ("padded", "dpo.batching=auto: using padded, since model type gemma2 is not one of "
                                          "llama, qwen2, qwen3, mistral, phi3")),
])
def test_auto_picks_the_fastest_supported_layout_or_says_why_not(requested, model_type, attn, expected):
    assert layouts.resolve(requested, model_type, attn) == expected


def test_a_sliding_window_shorter_than_max_length_keeps_padded():
    mistral = AutoConfig.for_model("mistral", sliding_window=4096)
    assert layouts.layout_model_type(mistral, 1024) == "mistral"
    assert layouts.resolve("auto", layouts.layout_model_type(mistral, 8192), "sdpa") == (
        "padded", "dpo.batching=auto: using padded, since mistral with sliding_window 4096 < max_length 8192: the "
                  "layout's own mask would replace the window (raise the window or use padded)")
    assert layouts.layout_model_type(AutoConfig.for_model("qwen2", sliding_window=64), 1024) == "qwen2"  # off by default
    assert layouts.layout_model_type(AutoConfig.for_model("qwen3", sliding_window=64), 1024) == "qwen3"
    assert layouts.layout_model_type(AutoConfig.for_model("phi3", sliding_window=2047), 1024) == "phi3"
    assert layouts.layout_model_type(AutoConfig.for_model("mistral", sliding_window=None), None) == "mistral"


@pytest.mark.parametrize("requested, model_type, attn, message", [
    ("prefix_shared", "llama", "flash_attention_2", "dpo.batching=prefix_shared: attn_implementation=flash_attention"),
    ("packed", "gemma2", "sdpa", "dpo.batching=packed: model type gemma2"),
    ("packed", "llama", "flex_attention", "dpo.batching=packed: attn_implementation=flex_attention takes neither"),
    ("prefixshared", "llama", "sdpa", "dpo.batching=prefixshared: choose one of auto, padded, packed, prefix_shared"),
])
def test_an_explicit_layout_that_cannot_work_is_refused_in_one_line(requested, model_type, attn, message):
    with pytest.raises(ConfigError, match=message) as err:
        layouts.resolve(requested, model_type, attn)
    assert "\n" not in str(err.value)



def test_the_start_up_check_refuses_an_explicit_layout_the_attention_cannot_take():
    layouts.check(compose(["model.attn_implementation=flash_attention_2"]))  # auto: packed later, no error
    layouts.check(compose(["dpo.batching=packed", "model.attn_implementation=flash_attention_2"]))
    with pytest.raises(ConfigError, match="dpo.batching=prefix_shared: attn_implementation=flash_attention_2 takes"):
        layouts.check(compose(["dpo.batching=prefix_shared", "model.attn_implementation=flash_attention_2"]))


# --- one forward: log-probs and TRL's per-token metrics equal padded's -------------------------------------


def tiny_random_model(model_type: str, attn: str):
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=128, pad_token_id=0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    add_fused_lm_head(model, outputs=logps.POLICY_OUTPUTS)  # what TRL's DPOTrainer installs
    logps.wrap_forward(model, "padded", logps.POLICY_OUTPUTS)
    return model


def forward_and_grads(model, batch, layout: str):
    logps.set_layout(model, layout)
    model.zero_grad()
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                use_cache=False, fused_lm_head=True)
    (out.log_probs.sum() + out.entropy.sum()).backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters()}


# Qwen3's per-head q/k RMSNorm (over 8 dims in this tiny model) amplifies float32 rounding in the backward: its
# gradients differ from padded's by up to 1.3e-4 of a tensor's largest entry (input_layernorm, measured), while its
# forward log-probs agree within 1e-6 as every other model's. Its gradients are held to 3e-4 of that entry.
# Phi-3's fused qkv/gate_up projections sum in another order once the rows are laid out (transformers 5.25): its
# gradients differ by up to 5e-7 of a tensor's largest entry, above 1e-6 absolute for its largest tensors; a wrong
# mask or position moves them by more than 1e-3 of it. Held to 1e-5 of that entry.
GRAD_ATOL_OF_MAX = {"qwen3": 3e-4, "phi3": 1e-5}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3", "mistral", "phi3"])  # windows > 128 tokens
def test_per_pair_logps_metrics_and_gradients_equal_padded(model_type, attn):
    model, batch = tiny_random_model(model_type, attn), padded_batch(random_pairs(8, seed=1))
    padded, padded_grads = forward_and_grads(model, batch, "padded")
    for layout in ("packed", "prefix_shared"):
        laid_out, grads = forward_and_grads(model, batch, layout)
        torch.testing.assert_close(laid_out.log_probs.sum(1), padded.log_probs.sum(1), rtol=FORWARD_RTOL, atol=1e-6)
        for field in ("log_probs", "entropy", "mean_logits"):
            torch.testing.assert_close(getattr(laid_out, field), getattr(padded, field), rtol=FORWARD_RTOL, atol=1e-5)
        assert torch.equal(laid_out.is_top1, padded.is_top1) and torch.equal(laid_out.label_mask, padded.label_mask)
        for name, grad in padded_grads.items():
            atol = GRAD_ATOL_OF_MAX.get(model_type, 0) * grad.abs().max().item() or 1e-6
            torch.testing.assert_close(grads[name], grad, rtol=FORWARD_RTOL, atol=atol, msg=f"{layout} {name}")


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_the_varlen_layout_for_flash_attention_is_one_unpadded_row_and_equals_padded(model_type):
    """What flash_attention_2 receives (one row, no mask, position ids restarting at 0 per sequence), run through
    sdpa: transformers builds sdpa's block mask from the same position ids that give flash attention its
    cu_seqlens. Exact on CPU; the flash kernel itself is only reachable on a GPU (make gpu-check)."""
    model, batch = tiny_random_model(model_type, "sdpa"), padded_batch(random_pairs(8, seed=2))
    padded, padded_grads = forward_and_grads(model, batch, "padded")
    layout = layouts.build("packed", batch["input_ids"], batch["attention_mask"], batch["labels"], one_row=True)
    assert layout.input_ids.size(0) == 1 and layout.num_tokens == int(batch["attention_mask"].sum())  # no padding
    starts = (layout.position_ids[0] == 0).nonzero().view(-1).tolist()
    assert len(starts) == batch["input_ids"].size(0)  # one boundary per sequence, as flash attention will find them
    model.zero_grad()
    out = logps.layout_forward(model, "packed", logps.POLICY_OUTPUTS, batch["input_ids"], batch["attention_mask"],
                               batch["labels"], kind=layouts.VARLEN)
    (out.log_probs.sum() + out.entropy.sum()).backward()
    torch.testing.assert_close(out.log_probs.sum(1), padded.log_probs.sum(1), rtol=FORWARD_RTOL, atol=1e-6)
    torch.testing.assert_close(out.entropy, padded.entropy, rtol=FORWARD_RTOL, atol=1e-5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, padded_grads[name], rtol=FORWARD_RTOL, atol=1e-6, msg=name)


# --- the trainer: loss types, reference placements, 20-step runs, resume --------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    spec = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=128)
    texts = [f"review {i}: a great wonderful film, a terrible boring plot" for i in range(40)]
    return str(build_tiny_model(tmp_path_factory.mktemp("layouts") / "tiny", spec, texts, seed=0))


def build_trainer(tiny_dir, tmp_path, batching: str, reference: str = "model", max_steps: int = 20,
                  **args) -> ProjectDPOTrainer:
    config = DPOConfig(output_dir=str(tmp_path / f"out-{batching}"), use_cpu=True, bf16=False, report_to=[],
                       max_length=48, per_device_train_batch_size=4, max_steps=max_steps, gradient_checkpointing=False,
                       learning_rate=1e-3, logging_steps=1, seed=0, beta=0.1,
                       precompute_ref_log_probs=reference == "precomputed", dataloader_num_workers=0,
                       **{"save_strategy": "no", **args})
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return ProjectDPOTrainer(
        model=tiny_dir, args=config, train_dataset=Dataset.from_list(text_pairs(80, seed=2)),
        processing_class=AutoTokenizer.from_pretrained(tiny_dir), peft_config=lora if reference == "lora" else None,
        beta_schedule=BetaSchedule.from_config(OmegaConf.create({"schedule": "linear", "value": 0.1, "final": 0.5,
                                                                 "warmup_steps": 2})),
        reference_cache_dir=tmp_path / f"ref_cache-{batching}" if reference == "precomputed" else None,
        batching=batching)


class Replay:
    """Stands in for a model in TRL's loss: returns one recorded forward, so each loss type costs no forward."""

    def __init__(self, outputs, training: bool = True):
        self.outputs, self.training = outputs, training

    def __call__(self, **kwargs):
        return self.outputs


def recorded_forwards(trainer, batch, layout: str):
    """The policy's and the reference's outputs for `batch`, as TRL's loss calls them, in `layout`."""
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False,
              "labels": batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100), "fused_lm_head": True}
    outputs = []
    for model in (trainer.model, trainer.ref_model):
        logps.set_layout(trainer.accelerator.unwrap_model(model), layout)
        with torch.no_grad():
            outputs.append(model(**kwargs))
    return outputs


def test_every_trl_loss_type_gives_the_same_loss(tiny_dir, tmp_path):
    trainer = build_trainer(tiny_dir, tmp_path, "prefix_shared")
    assert trainer.batch_layout == "prefix_shared"
    batch = next(iter(trainer.get_train_dataloader()))
    recorded = {layout: recorded_forwards(trainer, batch, layout) for layout in ("padded", "prefix_shared")}
    trainer.label_smoothing = 0.1  # exo_pair's log(epsilon) and robust's division need a non-zero value
    checked = []
    for loss_type in dpo_loss_types():
        for ld_alpha in (None, 0.5):  # LD-DPO's length-desensitized log-probs, from the same per-token values
            trainer.loss_types, trainer.loss_weights, trainer.ld_alpha = [loss_type], [1.0], ld_alpha
            losses = {}
            for layout, (policy, reference) in recorded.items():
                trainer.ref_model = Replay(reference)
                losses[layout] = trainer.compute_loss(Replay(policy), batch).item()
            assert math.isclose(losses["prefix_shared"], losses["padded"], rel_tol=FORWARD_RTOL, abs_tol=1e-6), \
                (loss_type, ld_alpha, losses)
        checked.append(loss_type)
    assert len(checked) >= 15, checked


LOGGED = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
          "logps/rejected", "logits/chosen", "logits/rejected", "entropy", "mean_token_accuracy", "beta")


def logged_steps(trainer) -> list[dict]:
    trainer.train()
    return [{k: entry[k] for k in LOGGED} for entry in trainer.state.log_history if "rewards/margins" in entry]


# The project's default reference (precomputed) for the 20 steps; the others for a few steps each.
@pytest.mark.slow
@pytest.mark.parametrize("reference, steps", [("precomputed", 20), ("model", 4), ("lora", 4)])
def test_steps_log_the_same_losses_and_metrics_as_padded(tiny_dir, tmp_path, reference, steps, monkeypatch):
    padded = build_trainer(tiny_dir, tmp_path, "padded", reference, max_steps=steps)
    built = []  # the layout path really runs (a forward that bypassed it would match padded trivially)
    monkeypatch.setattr(layouts, "build", lambda *a, build=layouts.build, **k: built.append(a[0]) or build(*a, **k))
    shared = build_trainer(tiny_dir, tmp_path, "prefix_shared", reference, max_steps=steps)
    if reference == "precomputed":  # the numbers do not change, so neither does the cache key: one entry serves both
        data = padded.train_dataset
        assert digest(key_parts(padded, data, tmp_path)) == digest(key_parts(shared, data, tmp_path))
        for column in ("ref_chosen_logps", "ref_rejected_logps"):
            torch.testing.assert_close(torch.tensor(shared.train_dataset[column]), torch.tensor(data[column]))
    expected, got = logged_steps(padded), logged_steps(shared)
    # policy and reference forward per step (precomputed: the reference pass's batches instead)
    assert len(built) >= steps * (1 if reference == "precomputed" else 2) and set(built) == {"prefix_shared"}
    assert len(got) == len(expected) == steps
    assert expected[-1]["beta"] > expected[0]["beta"]  # the linear schedule ran
    for step, (a, b) in enumerate(zip(expected, got), start=1):
        for key in LOGGED:
            assert math.isclose(b[key], a[key], rel_tol=RUN_RTOL, abs_tol=1e-5), (reference, step, key, a[key], b[key])


@pytest.mark.slow
def test_a_resumed_run_logs_exactly_the_losses_of_an_uninterrupted_one(tiny_dir, tmp_path):
    whole = build_trainer(tiny_dir, tmp_path / "whole", "prefix_shared", max_steps=6, save_strategy="steps",
                          save_steps=3)
    expected = logged_steps(whole)
    resumed = build_trainer(tiny_dir, tmp_path / "resumed", "prefix_shared", max_steps=6)
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "out-prefix_shared" / "checkpoint-3"))
    got = [{k: e[k] for k in LOGGED} for e in resumed.state.log_history if "rewards/margins" in e]
    assert [e.keys() for e in got] == [e.keys() for e in expected]
    for key in LOGGED:
        assert_same_run([e[key] for e in got], [e[key] for e in expected])


@pytest.mark.multiproc
def test_zero3_on_two_processes_in_prefix_shared_matches_one_padded_process(tmp_path):
    """ZeRO-3 shards the LM head the layout path reads directly (gathered like TRL's fused head) and wraps the
    reference in an engine; 2 x 8 pairs in prefix_shared vs 1 x 16 padded: same data per step, same numbers.
    Tolerance as tests/test_distributed.py: rel 1e-4 (the ranks' sums all-reduce in another order)."""
    common = ("debug=fast", "sft.enabled=false", "eval.enabled=false", "+dpo.args.max_steps=3",
              "dpo.args.logging_steps=1", "dpo.args.warmup_steps=0", "dpo.reference=model")
    one = read_results(run_train(*common, "dpo.batching=padded", "dpo.args.per_device_train_batch_size=16",
                                 output_root=tmp_path / "one"))
    two = read_results(run_train(*common, "dpo.batching=prefix_shared", "dpo.args.per_device_train_batch_size=8",
                                 "deepspeed=zero3", output_root=tmp_path / "two", nproc=2))
    h1, h2 = one["dpo"]["history"], two["dpo"]["history"]
    assert [e["step"] for e in h1] == [e["step"] for e in h2] == [1, 2, 3]
    for e1, e2 in zip(h1, h2):
        for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "grad_norm"):
            assert e2[key] == pytest.approx(e1[key], rel=1e-4, abs=1e-5), (e1["step"], key, e1[key], e2[key])


def test_a_released_trainer_lets_go_of_policy_reference_and_optimizer(tiny_dir, tmp_path):
    """run_sft and run_dpo release their trainer before the next stage loads whole models (evaluation: policy and
    reference on every rank); the trainer and its callback handler held all three until the process ended."""
    trainer = build_trainer(tiny_dir, tmp_path, "padded", max_steps=1)
    trainer.train()
    held = [weakref.ref(trainer.model), weakref.ref(trainer.ref_model), weakref.ref(trainer.optimizer)]
    release(trainer)
    gc.collect()
    assert [ref() for ref in held] == [None, None, None]
