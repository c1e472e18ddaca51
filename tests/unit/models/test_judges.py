"""Judges after DPO: the judge group, a reward model as judge, and evaluation spread over ranks.

The reward model is a tiny sequence classifier built from a config with the tiny model's tokenizer and fitted
in seconds to the lexicon judge's scores, so its rewards should rank samples as the lexicon does: measured
Spearman rank correlation 0.993 on 500 held-out texts (80 steps; 0.953 after 40).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from helpers import wandb_file
from helpers.runs import read_results, results_path, run_train, start_check_refusal
from helpers.reward_model import fit_reward_model, scored_texts, two_label_copy
from helpers.sampling import sample_prompts
from train.config.compose import compose
from train.core.errors import ConfigError
from train.data import synthetic
from train.models import judges
from train.models.sampling import render_prompts, sample, sequence_logps, shard_bounds, win_rate
from train.models.tiny import build_tokenizer
from train.pipeline.checks import check_config
from train.pipeline.results import final_metrics

JUDGE_FIELDS = ("judge_reward", "reference_judge_reward", "win_rate_vs_reference", "kl_to_reference", "judge_agreement")
# 8 train pairs, 3 test pairs; two DPO steps without warmup, so the policy moves away from its reference.
HH = ("data=hh_rlhf", "data.source=tests/fixtures/hh_rlhf", "data.max_drop_fraction=0.5", "debug=fast",
      "dpo.args.per_device_train_batch_size=4", "dpo.args.warmup_steps=0")


@pytest.fixture(scope="session")
def reward_model(tmp_path_factory) -> Path:
    return fit_reward_model(tmp_path_factory.mktemp("reward_model"))


def judge_overrides(path: Path) -> tuple[str, ...]:
    return ("judge=reward_model", f"judge.name_or_path={path}")


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(x):  # average ranks for ties
        order, r = sorted(range(len(x)), key=x.__getitem__), [0.0] * len(x)
        i = 0
        while i < len(x):
            j = i
            while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    return torch.corrcoef(torch.tensor([ranks(a), ranks(b)]))[0, 1].item()


def test_the_fitted_reward_model_ranks_samples_as_the_lexicon_does(reward_model):
    cfg = compose([*judge_overrides(reward_model), "data=hh_rlhf"])
    check_config(cfg)
    judges.check_reward_model(cfg.judge, cfg.data.conversational)
    judge = judges.load_judge(cfg.judge, cfg.data.conversational, torch.device("cpu"))  # from its directory, as a hub reward model loads
    prompts, responses, lexicon = scored_texts(500, "held-out")
    rewards = judge.score(prompts, responses)
    assert spearman(rewards, lexicon) > 0.9
    # Scored alone or in a batch of others: the same reward, to float precision.
    assert judge.score(prompts[:1], responses[:1])[0] == pytest.approx(rewards[0], abs=1e-4)


def test_win_rate_and_judge_agreement_count_ties_half():
    assert win_rate([2.0, 1.0, 0.0, 5.0], [1.0, 1.0, 3.0, 5.0]) == (1 + 0.5 + 0 + 0.5) / 4
    results = {"dpo": {"judge_reward": 2.0, "judge_agreement": 0.75, "kl_to_reference": 0.5, "win_rate_vs_reference": None,
                       "held_out": {"rewards/accuracies": 0.9, "rewards/margins": 1.5, "loss": 0.3}}}
    assert final_metrics(results) == {"final/judge_reward": 2.0, "final/judge_agreement": 0.75, "final/kl_to_reference": 0.5,
                                      "final/held_out_accuracy": 0.9, "final/held_out_margin": 1.5}


@pytest.mark.parametrize("count,world", [(32, 1), (32, 2), (3, 2), (7, 3), (1, 4)])
def test_shares_cover_every_prompt_once_in_rank_order(count, world):
    shares = [range(*shard_bounds(count, rank, world)) for rank in range(world)]
    assert [i for share in shares for i in share] == list(range(count))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def tiny_sampler(prompts: int, seed: int):
    """(tokenizer, a 1-layer random Llama, `prompts` rendered chat prompts) for the sampling tests."""
    tokenizer = build_tokenizer(synthetic.corpus(0), 300)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=128,
                                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)).eval()
    rng = random.Random(seed)
    texts = render_prompts(tokenizer, [[{"role": "user", "content": synthetic.make_prompt(rng)}] for _ in range(prompts)],
                           True)
    return tokenizer, model, texts


def test_a_prompt_samples_the_same_text_alone_in_a_batch_or_on_another_rank():
    """Per-prompt random streams: what makes 1 and N processes sample the same texts."""
    tokenizer, model, texts = tiny_sampler(prompts=5, seed=0)

    def draw(indices, batch_size, seed=0):
        records = sample_prompts(model, model, tokenizer, [texts[i] for i in indices], indices, 8, 1.0, batch_size, seed)
        return [r["policy"] for r in records]

    together = draw([0, 1, 2, 3, 4], 5)
    assert draw([0, 1, 2, 3, 4], 2) == together == draw([0, 1], 5) + draw([2, 3, 4], 5)
    assert len(set(together)) > 1 and draw([0, 1, 2, 3, 4], 5, seed=1) != together


def test_completion_logps_from_the_kept_logits_equal_the_full_forward():
    """sequence_logps runs the LM head at the completion positions only (logits_to_keep); the sums equal a
    log-softmax over the whole forward's logits."""
    tokenizer, model, texts = tiny_sampler(prompts=4, seed=1)
    ids, attention, mask, _ = sample(model, tokenizer, texts, 8, 1.0, [1, 2, 3, 4])
    mask[0, 3:] = False  # as if the first completion had ended at its third token
    got = sequence_logps(model, ids, attention, mask)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention,
                       position_ids=(attention.cumsum(1) - 1).clamp(min=0)).logits.float()
    full = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)[:, -mask.shape[1]:]
    torch.testing.assert_close(got, (full * mask).sum(1), rtol=1e-6, atol=1e-5)


def test_the_data_group_picks_the_default_judge_and_the_command_line_wins():
    assert compose([]).judge.kind == "sentiment"  # data=synthetic: its lexicon is the ground truth
    assert compose(["data=hh_rlhf"]).judge.kind == "none"  # real sources have no ground-truth reward
    assert compose(["judge=none"]).judge.kind == "none"
    assert compose(["data=hh_rlhf", "judge=sentiment"]).judge.kind == "sentiment"


@pytest.mark.parametrize("overrides,message", [
    (["judge=reward_model", "judge.name_or_path=/no/such/reward_model"], "judge.name_or_path=/no/such/reward_model: no such directory"),
    (["judge.kind=lexicon"], "judge.kind=lexicon: choose one of none, reward_model, sentiment"),
])
def test_judge_settings_are_checked_at_start(overrides, message):
    assert message in start_check_refusal(overrides)


def test_a_reward_model_judge_needs_its_path_before_training():
    cfg = compose(["judge=reward_model"])
    check_config(cfg)  # every option composes and passes the start-up checks on its own (tests/test_config.py)
    with pytest.raises(ConfigError, match="judge.name_or_path is required by judge=reward_model"):
        judges.check_reward_model(cfg.judge, cfg.data.conversational)  # pipeline/run.py, after the data, before training


def test_a_reward_model_that_cannot_judge_is_refused_before_training(reward_model, tmp_path):
    two_labels = two_label_copy(reward_model, tmp_path / "two_labels")
    with pytest.raises(ConfigError, match="a classifier with 2 labels; a reward model has one"):
        judges.check_reward_model((c := compose(judge_overrides(two_labels))).judge, c.data.conversational)
    no_template = tmp_path / "no_template"
    shutil.copytree(reward_model, no_template)
    (no_template / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer_config = json.loads((no_template / "tokenizer_config.json").read_text())
    tokenizer_config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    with pytest.raises(ConfigError, match="has no chat template but data.conversational=true: set judge.chat_template"):
        judges.check_reward_model((c := compose(judge_overrides(no_template))).judge, c.data.conversational)
    judges.check_reward_model((c := compose([*judge_overrides(no_template), "judge.chat_template=chatml"])).judge, c.data.conversational)


@pytest.mark.slow
def test_with_the_reward_model_as_judge_dpo_scores_above_sft(shared_output_root, reward_model):
    # The judge stays out of run names (re-judging a run is stage=eval in its directory): a name of its own keeps
    # this run apart from test_pipeline's lexicon-judged debug=fast run in the same output root.
    results = read_results(run_train("debug=fast", "name=judged_by_reward_model", *judge_overrides(reward_model),
                                     output_root=shared_output_root))
    dpo = results["dpo"]
    assert dpo["judge"] == f"reward_model:{reward_model}"
    assert dpo["judge_reward"] > results["sft"]["judge_reward"] + 1.0, (results["sft"]["judge_reward"], dpo["judge_reward"])
    assert dpo["win_rate_vs_reference"] >= 0.7
    assert dpo["judge_agreement"] >= 0.9  # the synthetic labels come from the lexicon it was fitted to


@pytest.fixture(scope="module")
def hh_run(shared_output_root, reward_model):
    return run_train(*HH, *judge_overrides(reward_model), output_root=shared_output_root, wandb=True)


@pytest.mark.slow
def test_a_real_source_with_a_reward_model_fills_every_judge_field(hh_run):
    results = read_results(hh_run)
    dpo = results["dpo"]
    assert all(isinstance(dpo[key], float) for key in JUDGE_FIELDS), {key: dpo[key] for key in JUDGE_FIELDS}
    assert dpo["judge_agreement"] >= 2 / 3  # the fixture's chosen answers are the positive reviews (3 test pairs)
    assert results["sft"]["judge_reward"] == dpo["reference_judge_reward"]
    samples = [json.loads(line) for line in (results_path(hh_run).parent / "eval_samples.jsonl").read_text().splitlines()]
    assert len(samples) == dpo["num_prompts"] == 3 and all(isinstance(s["policy_reward"], float) for s in samples)
    rows = wandb_file.history(wandb_file.run_file(Path(results["wandb"]["dir"])))
    (final,) = [r for r in rows if "final/judge_agreement" in r]
    assert {f"final/{k}" for k in (*JUDGE_FIELDS, "held_out_accuracy", "held_out_margin")} <= set(final)
    assert final["final/held_out_accuracy"] == dpo["held_out"]["rewards/accuracies"]


@pytest.mark.multiproc
def test_two_processes_evaluate_exactly_like_one(hh_run, shared_output_root, reward_model, tmp_path):
    """stage=eval of the same policy on 2 processes (each samples and judges its share, gathered): the same
    samples in the same order, and the same metrics up to float noise (rewards of batches padded differently)."""
    one_dir = results_path(hh_run).parent
    two_dir = tmp_path / "two"
    shutil.copytree(one_dir, two_dir, ignore=shutil.ignore_patterns("wandb", ".run.lock"))
    proc = run_train(*HH, *judge_overrides(reward_model), "stage=eval", f"hydra.run.dir={two_dir}",
                     output_root=shared_output_root, nproc=2)
    one, two = read_results(hh_run)["dpo"], read_results(proc)["dpo"]
    assert one["kl_to_reference"] != 0.0  # a trained policy: its samples differ from the reference's
    for key in JUDGE_FIELDS:
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key

    def texts(run_dir):
        return [(s["index"], s["policy"], s["reference"]) for s in map(json.loads, (run_dir / "eval_samples.jsonl").open())]

    assert texts(two_dir) == texts(one_dir)
