"""beta=adaptive (beta-DPO): the rule on hand-computed margins, its state, its refusals, and real
runs: 1 vs 2 processes at the same global batch, and exact resume."""

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from helpers.runs import assert_same_run, read_results, run_train
from train.core.errors import ConfigError
from train.trainer import beta as beta_group
from train.trainer.adaptive_beta import AdaptiveBeta, filtered_loss_correction, kept_pairs, update_statistics


def paper(rho=0.25, alpha=0.6, momentum=0.9) -> AdaptiveBeta:
    return AdaptiveBeta(beta0=0.1, alpha=alpha, rho=rho, momentum=momentum, seed=0)


def test_the_rule_on_hand_computed_margins():
    rule = paper()
    # batch 1 sets the statistics: M0 = 1.5, sigma = std([0, 1, 2, 3]) = 1.2910; 3 of 4 pairs kept
    beta, weights = rule.step(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    assert rule.stats.mean == 1.5 and rule.stats.std == pytest.approx(1.2909944)
    kept = weights > 0
    assert kept.sum() == 3 and torch.allclose(weights[kept], torch.tensor(4 / 3))
    kept_mean = torch.tensor([0.0, 1.0, 2.0, 3.0])[kept].mean().item()
    assert beta == pytest.approx(0.1 * (1 + 0.6 * (kept_mean - 1.5)))
    # batch 2: M0 = 0.9 * 1.5 + 0.1 * 4 = 1.75, sigma = 0.9 * 1.2910 + 0.1 * std([1, 2, 3, 10]) = 1.5701;
    # the outlier 10 has weight exp(-((10 - 1.75) / 1.5701)^2 / 2) ~ 1e-6: dropped, kept mean 2
    beta, weights = rule.step(torch.tensor([1.0, 2.0, 3.0, 10.0]))
    assert rule.stats.mean == pytest.approx(1.75) and rule.stats.std == pytest.approx(1.5701433)
    assert weights.tolist() == pytest.approx([4 / 3, 4 / 3, 4 / 3, 0.0])
    assert beta == pytest.approx(0.1 * (1 + 0.6 * (2.0 - 1.75)))
    assert rule.stats.batches == 2 and rule.beta == beta


def test_beta_is_clamped_and_rho_zero_keeps_every_pair():
    rule = paper(rho=0.0, alpha=10.0)
    rule.step(torch.tensor([5.0, 5.0]))
    beta, weights = rule.step(torch.tensor([-100.0, -100.0]))
    assert beta == 1e-3 and weights.tolist() == [1.0, 1.0]


def test_constant_margins_keep_beta_at_beta0():
    rule = paper(rho=0.2)
    for _ in range(5):
        beta, weights = rule.step(torch.full((10,), 2.5))
        assert beta == 0.1 and (weights > 0).sum() == 8
    assert rule.stats.mean == 2.5 and rule.stats.std == 0.0


def test_the_filter_samples_the_same_pairs_for_the_same_seed_and_batch():
    margins = torch.linspace(-2, 2, 16)
    stats = update_statistics(paper().stats, margins, 0.9)
    draws = [kept_pairs(margins, stats, 0.5, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1]) and draws[0].sum() == 8


def test_filtered_loss_is_the_mean_over_kept_pairs():
    margins = torch.tensor([0.5, -1.0, 2.0, 0.1], requires_grad=True)
    weights = torch.tensor([4 / 3, 4 / 3, 0.0, 4 / 3])
    trl_loss = (-F.logsigmoid(0.2 * margins)).mean()
    loss = trl_loss + filtered_loss_correction(margins, weights, 0.2)
    expected = (-F.logsigmoid(0.2 * margins[[0, 1, 3]])).mean()
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert margins.grad[2] == 0.0


def test_state_round_trips_through_trainer_state():
    rule = paper()
    rule.step(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    saved = json.loads(json.dumps({"AdaptiveBeta": rule.state()}))  # as trainer_state.json holds it
    fresh = paper()
    fresh.on_train_begin(None, SimpleNamespace(stateful_callbacks=saved), None)
    assert fresh.stats == rule.stats


@pytest.mark.parametrize("key,value", [("alpha", -0.1), ("rho", 1.0), ("rho", -0.1), ("momentum", 1.0)])
def test_bad_values_are_refused_in_one_line(key, value):
    cfg = OmegaConf.create({"schedule": "adaptive", "value": 0.1, "alpha": 0.6, "rho": 0.2, "momentum": 0.9})
    cfg[key] = value
    with pytest.raises(ConfigError, match=f"beta.{key}="):
        beta_group.check(cfg, OmegaConf.create({}))


def test_a_loss_the_rule_is_not_defined_for_is_refused():
    cfg = OmegaConf.create({"schedule": "adaptive", "value": 0.1, "alpha": 0.6, "rho": 0.2, "momentum": 0.9})
    with pytest.raises(ConfigError, match="dpo.args.loss_type"):
        beta_group.check(cfg, OmegaConf.create({"loss_type": ["ipo"]}))
    beta_group.check(cfg, OmegaConf.create({"loss_type": ["sigmoid"]}))


# Real runs: 6 DPO steps of the base tiny model, 16 pairs per step, every step logged.
SHORT = ("debug=fast", "beta=adaptive", "sft.enabled=false", "eval.enabled=false", "data.synthetic.num_pairs=128",
         "+dpo.args.max_steps=6",
         "dpo.args.logging_steps=1", "dpo.args.warmup_steps=0", "checkpoint.every_steps=3")


def adaptive_history(results: dict) -> list[tuple]:
    return [(e["step"], e["loss"], e["beta"], e["beta_margin_mean"]) for e in results["dpo"]["history"]]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    root = tmp_path_factory.mktemp("adaptive_straight")
    return read_results(run_train(*SHORT, "dpo.args.per_device_train_batch_size=16", output_root=root, wandb=True))


@pytest.mark.slow
def test_beta_adapts_and_is_logged_to_wandb_as_train_beta(straight):
    from helpers import wandb_file

    history = adaptive_history(straight)
    assert [h[0] for h in history] == list(range(1, 7))
    assert len({h[2] for h in history}) > 1  # beta moved with the margins
    rows = wandb_file.history(wandb_file.run_file(straight["wandb"]["dir"]))
    logged = [r for r in rows if "train/loss" in r]
    assert [r["train/beta"] for r in logged] == [h[2] for h in history]
    assert [r["train/beta_margin_mean"] for r in logged] == [h[3] for h in history]


@pytest.mark.multiproc
def test_two_processes_give_the_same_beta_as_one_at_the_same_global_batch(straight, tmp_path):
    """1 x 16 vs 2 x 8 pairs: the margins are gathered, so M0, the filter's draw and beta are the same;
    tolerance as tests/test_distributed.py (fp32 sums split across ranks differ at ~1e-6)."""
    two = read_results(run_train(*SHORT, "dpo.args.per_device_train_batch_size=8", output_root=tmp_path, nproc=2))
    for one_step, two_step in zip(adaptive_history(straight), adaptive_history(two), strict=True):
        assert two_step == pytest.approx(one_step, rel=1e-4, abs=1e-5), (one_step, two_step)


@pytest.mark.slow
def test_resume_continues_the_margin_statistics_exactly(straight, tmp_path):
    """6 steps straight vs 3 + stop (SIGTERM) + resume + 3: M0, sigma and the filter's draws are in the
    checkpoint, so every step's beta, margin mean and loss are identical."""
    batch = "dpo.args.per_device_train_batch_size=16"
    stopped = run_train(*SHORT, batch, output_root=tmp_path, check=False, env={"DPO_FAULT_INJECT": "sigterm:3"})
    assert stopped.returncode != 0 and "preempted: checkpoint at step 3 complete" in stopped.stdout
    resumed = read_results(run_train(*SHORT, batch, output_root=tmp_path))
    assert resumed["dpo"]["resumed_from"].endswith("checkpoint-3")
    for got, want in zip(adaptive_history(resumed), adaptive_history(straight), strict=True):
        assert_same_run(list(got), list(want))
