"""The reference log-prob cache (train/reference_cache.py): its key, its checks, and real runs from it.

Tiers: the key and the lookup are tested on toy inputs (seconds); the pipeline tests (slow) run DPO with
reference=model, precomputed (cold) and precomputed (warm) and a 2-process precompute (multiproc).
"""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import read_results, run_train
from train.reference_cache import ReferenceLogpsCache, digest, key_parts, token_ids_fingerprint

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


def fake_trainer(model_dir, **changes):
    """The attributes key_parts reads, with TRL's defaults; `changes` overrides any of them."""
    args = dict(max_length=1024, truncation_mode="keep_start", pad_to_multiple_of=None, padding_free=False,
                ld_alpha=None, model_init_kwargs={}, beta=0.1, learning_rate=1e-6)
    model = dict(dtype=torch.float32, attn="sdpa")
    tokenizer = dict(pad_token_id=0, chat_template="{{ messages }}")
    for key, value in changes.items():
        next(d for d in (args, model, tokenizer) if key in d)[key] = value
    config = SimpleNamespace(_name_or_path=str(model_dir), _attn_implementation=model["attn"])
    return SimpleNamespace(args=SimpleNamespace(**args), model=SimpleNamespace(config=config, dtype=model["dtype"]),
                           _tokenizer=SimpleNamespace(**tokenizer), _precompute_model_hash="unused")


def key_of(model_dir, tmp_path, dataset=None, **changes):
    return digest(key_parts(fake_trainer(model_dir, **changes), dataset or token_rows(), tmp_path / "memo"))


@pytest.mark.parametrize("change", [
    {"max_length": 16}, {"truncation_mode": "keep_end"}, {"pad_to_multiple_of": 8}, {"padding_free": True},
    {"ld_alpha": 0.5}, {"chat_template": "{{ other }}"}, {"pad_token_id": 1}, {"dtype": torch.bfloat16},
    {"attn": "eager"},
])
def test_every_tokenization_truncation_and_loading_setting_changes_the_key(model_dir, tmp_path, change):
    assert key_of(model_dir, tmp_path, **change) != key_of(model_dir, tmp_path)


def test_settings_that_do_not_change_reference_logps_keep_the_key(model_dir, tmp_path):
    # beta and the learning rate differ between the runs of a sweep: they must all find the same cache.
    assert key_of(model_dir, tmp_path, beta=0.5, learning_rate=1e-3) == key_of(model_dir, tmp_path)


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

FAST = ("debug=fast", "sft.enabled=false", "eval.enabled=false", "+dpo.args.max_steps=4", "dpo.args.logging_steps=1",
        "dpo.args.warmup_steps=0")


def history(results):
    return results["dpo"]["history"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("refcache")
    model = run_train(*FAST, "dpo.reference=model", output_root=root)
    cold = run_train(*FAST, "dpo.reference=precomputed", output_root=root)
    warm = run_train(*FAST, "dpo.reference=precomputed", "beta.value=0.1", output_root=root)
    return root, model, cold, warm


@pytest.mark.slow
def test_cached_and_uncached_runs_give_the_same_rewards(runs):
    """Warm (read from the cache) equals cold (computed and written) exactly: the same numbers are read
    back. Against reference=model (the reference forward inside every step) the tolerance is rel 1e-4 /
    abs 1e-5: the precompute pass pads its batches differently from the training batches, which moves
    fp32 log-prob sums at the ~1e-6 level."""
    root, model, cold, warm = runs
    assert "reference log-probs: computed train" in cold.stdout
    assert "reference log-probs: reusing" in warm.stdout and "reference log-probs: computed" not in warm.stdout
    h_model, h_cold, h_warm = (history(read_results(p)) for p in (model, cold, warm))
    assert [e["step"] for e in h_model] == [e["step"] for e in h_cold] == [e["step"] for e in h_warm] == [1, 2, 3, 4]
    assert h_cold[-1]["rewards/margins"] != 0.0
    for e_model, e_cold, e_warm in zip(h_model, h_cold, h_warm):
        for key in REWARD_KEYS + ("loss",):
            assert e_warm[key] == e_cold[key], (key, e_cold["step"])
            assert e_cold[key] == pytest.approx(e_model[key], rel=1e-4, abs=1e-5), (key, e_cold["step"])
    dist = read_results(warm)["distributed"]
    assert all(rank["reference_params_local"] == 0 for rank in dist["ranks"])  # no reference model in memory


@pytest.mark.slow
def test_changed_truncation_is_not_served_from_the_cache(runs):
    root, _, cold, _ = runs
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
    processes over gloo, where accelerate's own gather is a no-op (train/reference_cache.py)."""
    from datasets import Dataset

    root, _, cold, _ = runs
    proc = run_train(*FAST, "dpo.reference=precomputed", f"deepspeed={deepspeed}", output_root=tmp_path, nproc=2)
    assert "reference log-probs: computed train (" in proc.stdout and "on 2 process(es)" in proc.stdout
    one = {p.name: Dataset.from_file(str(p)) for p in (root / "ref_cache").glob("*.arrow")}
    two = {p.name: Dataset.from_file(str(p)) for p in (tmp_path / "ref_cache").glob("*.arrow")}
    assert set(two) <= set(one) and len(two) == 2  # train and eval, same keys as the 1-process run
    for name, data in two.items():
        assert data.num_rows == one[name].num_rows
        for column in ("ref_chosen_logps", "ref_rejected_logps"):
            assert data[column] == pytest.approx(one[name][column], rel=1e-5, abs=1e-5)
