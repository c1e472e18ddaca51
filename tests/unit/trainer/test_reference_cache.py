"""The reference log-prob cache (train/trainer/reference_cache.py): its key, its checks, and real runs from it.

Tiers: the key and the lookup are tested on toy inputs (seconds); the pipeline tests (slow) run DPO with
reference=model, precomputed (cold) and precomputed (warm, at another beta) and a 2-process precompute (multiproc).
"""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from transformers import AutoConfig
from trl import DPOConfig

from helpers.runs import read_results, run_train
from train.trainer.reference_cache import ReferenceLogpsCache, digest, key_parts, token_ids_fingerprint

REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")


def token_rows(order=(0, 1, 2)):
    from datasets import Dataset

    rows = {"prompt_ids": [[1, 2], [3], [4, 5, 6]], "chosen_ids": [[7], [8, 9], [1]], "rejected_ids": [[2], [3], [4, 4]]}
    return Dataset.from_dict({k: [v[i] for i in order] for k, v in rows.items()})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("ref-model")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 vocab_size=32, max_position_embeddings=32)).save_pretrained(path)
    return path


ARG_DEFAULTS = dict(output_dir="/nonexistent/ref-cache-test", bf16=False, report_to=[])


def fake_trainer(model_dir, **changes):
    """A trainer as key_parts sees it: a real DPOConfig as `args` (TRL's defaults, `changes` on top), the
    model's real config (loaded from `model_dir`, so name_or_path is the directory), a tokenizer's fields.
    `changes` names DPOConfig fields, or dtype / attn (the model), or pad_token_id / chat_template."""
    model = {"dtype": changes.pop("dtype", torch.float32), "attn": changes.pop("attn", "sdpa")}
    tokenizer = {"pad_token_id": changes.pop("pad_token_id", 0), "chat_template": changes.pop("chat_template", "{{ messages }}")}
    args = DPOConfig(**{**ARG_DEFAULTS, **changes})
    config = AutoConfig.from_pretrained(model_dir, attn_implementation=model["attn"])
    return SimpleNamespace(args=args, model=SimpleNamespace(config=config, dtype=model["dtype"]),
                           processing_class=SimpleNamespace(**tokenizer), _precompute_model_hash="unused")


def key_of(model_dir, tmp_path, dataset=None, **changes):
    return digest(key_parts(fake_trainer(model_dir, **changes), dataset or token_rows(), tmp_path / "memo"))


@pytest.mark.parametrize("change", [
    {"max_length": 16}, {"truncation_mode": "keep_end"}, {"pad_to_multiple_of": 8}, {"padding_free": True},
    {"ld_alpha": 0.5}, {"chat_template": "{{ other }}"}, {"pad_token_id": 1}, {"dtype": torch.bfloat16},
    {"attn": "eager"},
])
def test_every_tokenization_truncation_and_loading_setting_changes_the_key(model_dir, tmp_path, change):
    assert key_of(model_dir, tmp_path, **change) != key_of(model_dir, tmp_path)


# What the runs of a sweep (and a restart) change that cannot change the reference's log-probs.
TRAINING_ONLY = dict(beta=0.5, learning_rate=1e-3, loss_type=["ipo"], label_smoothing=0.1, seed=7,
                     num_train_epochs=5, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                     warmup_steps=10, lr_scheduler_type="cosine", weight_decay=0.1, max_grad_norm=0.5,
                     logging_steps=1, output_dir="/nonexistent/another-run", run_name="another")


def test_settings_that_do_not_change_reference_logps_keep_the_key(model_dir, tmp_path):
    """Real DPOConfigs that differ in every training-only setting: the key stays, so every run of a sweep
    finds the same cache. (It would not if the key hashed the whole of `args`.)"""
    base, changed = fake_trainer(model_dir), fake_trainer(model_dir, **TRAINING_ONLY)
    differing = {k for k, v in changed.args.to_dict().items() if base.args.to_dict()[k] != v}
    assert set(TRAINING_ONLY) <= differing  # the configs really differ in each of these
    memo = tmp_path / "memo"
    assert digest(key_parts(changed, token_rows(), memo)) == digest(key_parts(base, token_rows(), memo))


def test_a_processor_keys_like_the_tokenizer_it_holds(model_dir, tmp_path):
    trainer = fake_trainer(model_dir)
    processor = fake_trainer(model_dir)
    processor.processing_class = SimpleNamespace(tokenizer=trainer.processing_class)
    memo = tmp_path / "memo"
    assert digest(key_parts(processor, token_rows(), memo)) == digest(key_parts(trainer, token_rows(), memo))


def test_data_content_and_row_order_change_the_key(model_dir, tmp_path):
    base = key_of(model_dir, tmp_path)
    assert key_of(model_dir, tmp_path, dataset=token_rows((1, 0, 2))) != base  # log-probs align by row
    assert key_of(model_dir, tmp_path, dataset=token_rows((0, 1))) != base
    # The same rows reached through an index mapping (select/filter) hash the same as a flat copy.
    assert token_ids_fingerprint(token_rows().select([2, 0])) == token_ids_fingerprint(token_rows((2, 0)))


def test_new_reference_weights_change_the_key(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    before = key_of(model_dir, tmp_path)
    changed = tmp_path / "changed"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1e-3
    model.save_pretrained(changed)
    assert key_of(changed, tmp_path) != before
    # Rewriting the weights in place (a new SFT model in the same directory) is seen too: the memo is
    # keyed by each file's size and mtime.
    model.save_pretrained(model_dir)
    assert key_of(model_dir, tmp_path) == key_of(changed, tmp_path) != before


def write_logps(path: Path, rows: int):
    from datasets import Dataset

    data = {"ref_chosen_logps": [-1.0 * i for i in range(rows)], "ref_rejected_logps": [-2.0 * i for i in range(rows)]}
    path.unlink(missing_ok=True)
    Dataset.from_dict(data).map(lambda b: b, batched=True, cache_file_name=str(path))


def test_lookup_refuses_stale_partial_or_mismatched_files(model_dir, tmp_path):
    cache = ReferenceLogpsCache(tmp_path / "ref_cache")
    cache.directory.mkdir()
    parts = key_parts(fake_trainer(model_dir), token_rows(), tmp_path / "memo")
    key = digest(parts)
    write_logps(cache.arrow_path(key), 3)
    assert cache.lookup(key, parts) is None  # no metadata: the writer did not finish
    cache.commit(key, parts, seconds=1.0)
    assert cache.lookup(key, parts) == cache.arrow_path(key)
    other = key_parts(fake_trainer(model_dir, max_length=16), token_rows(), tmp_path / "memo")
    assert cache.lookup(key, other) is None  # metadata says it was computed for other settings
    write_logps(cache.arrow_path(key), 2)
    assert cache.lookup(key, parts) is None  # rows missing
    cache.arrow_path(key).write_bytes(b"not arrow")
    assert cache.lookup(key, parts) is None  # unreadable
    meta = json.loads(cache.meta_path(key).read_text())
    assert meta["parts"]["settings"]["max_length"] == 1024 and meta["rows"] == 3


# --- real runs --------------------------------------------------------------------------------------

FAST = ("debug=fast", "sft.enabled=false", "eval.enabled=false", "data.synthetic.num_pairs=128", "+dpo.args.max_steps=4",
        "dpo.args.logging_steps=1",
        "dpo.args.warmup_steps=0")


def history(results):
    return results["dpo"]["history"]


def cache_files(root: Path) -> dict[str, int]:
    """Every file of the cache directory, with its modification time (ns)."""
    return {p.name: p.stat().st_mtime_ns for p in (root / "ref_cache").iterdir()}


def reference_logps(entry: dict, beta: float) -> tuple[float, float]:
    """The batch-mean reference log-probs a logged step used: TRL logs logps/* = mean policy log-prob and
    rewards/* = beta * mean(policy - reference)."""
    return tuple(entry[f"logps/{side}"] - entry[f"rewards/{side}"] / beta for side in ("chosen", "rejected"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """reference=model, then precomputed cold (beta 0.1: computes and writes the cache), then precomputed
    warm at another beta, as the next run of a beta sweep is."""
    root = tmp_path_factory.mktemp("refcache")
    model = run_train(*FAST, "dpo.reference=model", output_root=root)
    cold = run_train(*FAST, "dpo.reference=precomputed", output_root=root)
    after_cold = cache_files(root)
    warm = run_train(*FAST, "dpo.reference=precomputed", "beta.value=0.3", output_root=root)
    return SimpleNamespace(root=root, model=model, cold=cold, warm=warm, after_cold=after_cold,
                           after_warm=cache_files(root))


@pytest.mark.slow
def test_cached_and_uncached_runs_give_the_same_rewards(runs):
    """Cold (computed by the precompute pass, written, read back) against reference=model (the reference
    forward inside every step), same beta: tolerance rel 1e-4 / abs 1e-5, since the precompute pass pads its
    batches differently from the training batches, which moves fp32 log-prob sums at the ~1e-6 level."""
    assert "reference log-probs: computed train" in runs.cold.stdout
    assert "reference log-probs: computed" not in runs.model.stdout  # the model run used no cache
    h_model, h_cold = history(read_results(runs.model)), history(read_results(runs.cold))
    assert [e["step"] for e in h_model] == [e["step"] for e in h_cold] == [1, 2, 3, 4]
    assert h_cold[-1]["rewards/margins"] != 0.0
    for e_model, e_cold in zip(h_model, h_cold):
        for key in REWARD_KEYS + ("loss",):
            assert e_cold[key] == pytest.approx(e_model[key], rel=1e-4, abs=1e-5), (key, e_cold["step"])
    assert {p.suffix for p in (runs.root / "ref_cache").iterdir() if p.name in runs.after_cold} == {".arrow", ".json"}


@pytest.mark.slow
def test_a_sweep_at_another_beta_reuses_the_cache(runs):
    """The next run of a beta sweep (beta 0.3 after 0.1) reads the cold run's file: it computes and writes
    nothing, and the reference log-probs inside its loss are the cold run's (and the in-step reference
    model's), at every step, while its rewards differ (another beta, another policy after step 1)."""
    assert "reference log-probs: reusing" in runs.warm.stdout and "reference log-probs: computed" not in runs.warm.stdout
    assert runs.after_warm == runs.after_cold  # no new or rewritten .arrow / .json
    cold, warm, model = (read_results(p) for p in (runs.cold, runs.warm, runs.model))
    assert (cold["beta"], warm["beta"]) == (0.1, 0.3)
    h_cold, h_warm, h_model = history(cold), history(warm), history(model)
    assert [e["step"] for e in h_warm] == [1, 2, 3, 4] and all(e["beta"] == 0.3 for e in h_warm)
    assert h_warm[-1]["rewards/margins"] != pytest.approx(h_cold[-1]["rewards/margins"], rel=1e-3)
    assert h_warm[-1]["logps/chosen"] != pytest.approx(h_cold[-1]["logps/chosen"], rel=1e-6)  # policies differ
    for e_cold, e_warm, e_model in zip(h_cold, h_warm, h_model):
        ref_warm = reference_logps(e_warm, 0.3)
        # fp32 rounding of rewards / beta: ~1e-5 on log-probs of ~-90 (a wrong reference is off by ~1 or more)
        assert ref_warm == pytest.approx(reference_logps(e_cold, 0.1), rel=0, abs=1e-4), e_warm["step"]
        assert ref_warm == pytest.approx(reference_logps(e_model, 0.1), rel=1e-5, abs=1e-4), e_warm["step"]
    dist = warm["distributed"]
    assert all(rank["reference_params_local"] == 0 for rank in dist["ranks"])  # no reference model in memory


@pytest.mark.slow
def test_changed_truncation_is_not_served_from_the_cache(runs):
    root, cold = runs.root, runs.cold
    before = {p.name for p in (root / "ref_cache").glob("*.arrow")}
    proc = run_train(*FAST, "dpo.reference=precomputed", "dpo.args.max_length=24", output_root=root)
    assert "reference log-probs: computed train" in proc.stdout and "reusing" not in proc.stdout
    assert {p.name for p in (root / "ref_cache").glob("*.arrow")} > before  # a new entry; the old one is kept
    truncated = history(read_results(proc))[0]["logps/chosen"]
    assert truncated != history(read_results(cold))[0]["logps/chosen"]


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.parametrize("deepspeed", ["zero3", "none"])
def test_two_processes_compute_the_cache_distributed_and_agree_with_one(runs, tmp_path, deepspeed):
    """Each rank computes half the batches; TRL gathers them and the main process writes the file.
    The same key (world size is not part of it) must hold the same numbers, within fp32 noise (1e-5).
    zero3: the pass runs through a DeepSpeed inference engine over the partitioned policy; none: plain
    processes over gloo, where accelerate's own gather is a no-op (train/trainer/reference_cache.py)."""
    from datasets import Dataset

    root = runs.root
    proc = run_train(*FAST, "dpo.reference=precomputed", f"deepspeed={deepspeed}", output_root=tmp_path, nproc=2)
    assert "reference log-probs: computed train (" in proc.stdout and "on 2 process(es)" in proc.stdout
    one = {p.name: Dataset.from_file(str(p)) for p in (root / "ref_cache").glob("*.arrow")}
    two = {p.name: Dataset.from_file(str(p)) for p in (tmp_path / "ref_cache").glob("*.arrow")}
    assert set(two) <= set(one) and len(two) == 2  # train and eval, same keys as the 1-process run
    for name, data in two.items():
        assert data.num_rows == one[name].num_rows
        for column in ("ref_chosen_logps", "ref_rejected_logps"):
            assert data[column] == pytest.approx(one[name][column], rel=1e-5, abs=1e-5)
