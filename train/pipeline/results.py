"""Each stage returns a typed result; results.json is assembled from them here, in one place."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


from train.core.files import read_json, write_json
from train.config.choices import Stage
from train.config.schema import MainConfig

RESULTS = "results.json"


@dataclass
class SFTResult:
    path: str
    skipped: bool = False  # sft.enabled=false: DPO starts from the base model
    reused: bool = False  # a finished SFT model with the same inputs was found
    train: dict = field(default_factory=dict)  # the last logged training metrics
    history: list = field(default_factory=list)  # every logged training record with a loss (resumed: all steps)
    steps: Optional[int] = None  # optimizer steps, when trained here
    resumed_from: Optional[str] = None  # the SFT checkpoint a preempted SFT continued from
    runtime_s: Optional[float] = None  # only when trained here

    def record(self) -> dict:
        if self.skipped:
            return {"path": self.path, "skipped": True}
        if self.reused:
            return {"path": self.path, "reused": True}
        return {"path": self.path, "reused": False, "train": self.train, "history": self.history, "steps": self.steps,
                "resumed_from": self.resumed_from}


@dataclass
class DPOResult:
    policy_path: str
    reference_path: str
    train: dict  # the last logged record with rewards/accuracies
    history: list  # every logged training record with rewards/margins
    held_out: dict  # evaluation on the test pairs, eval_ prefix removed
    steps: int
    resumed_from: Optional[str]
    bad_steps: int
    runtime_s: float
    distributed: dict
    wandb: dict

    def record(self) -> dict:
        return {k: getattr(self, k) for k in ("policy_path", "reference_path", "train", "history", "held_out",
                                              "steps", "resumed_from", "bad_steps")}


@dataclass
class EvalResult:
    # kl_to_reference, num_prompts, judge (what judged), judge_reward and reference_judge_reward (mean reward of
    # policy / reference samples), win_rate_vs_reference (ties half), judge_agreement (held-out pairs where the
    # judge prefers the chosen response, ties half); judge fields None without a judge
    metrics: dict
    reference_judge_reward: Optional[float]
    runtime_s: float


def start_results(cfg: MainConfig, run_dir: Path) -> dict[str, Any]:
    """A stage run on its own (stage=dpo|eval|reward) adds to the run's results; stage=all|sft starts afresh."""
    results = read_json(run_dir / RESULTS, {}) if cfg.stage in (Stage.dpo, Stage.eval, Stage.reward) else {}
    results.setdefault("runtime_s", {})
    results.update(beta=cfg.beta.value, beta_schedule=dataclasses.asdict(cfg.beta), experiment=cfg.experiment)
    return results


def add_sft(results: dict, sft: SFTResult) -> None:
    results["sft"] = sft.record()
    if sft.runtime_s is not None:
        results["runtime_s"]["sft"] = sft.runtime_s


def add_dpo(results: dict, dpo: DPOResult) -> None:
    results["dpo"] = dpo.record()
    results["runtime_s"]["dpo"] = dpo.runtime_s
    results["distributed"] = dpo.distributed
    results["wandb"] = dpo.wandb


def add_rounds(results: dict, rounds: list[dict]) -> None:
    """On-policy rounds: one entry each in `rounds`; the last round's DPO and evaluation are the run's."""
    results["rounds"] = [{k: v for k, v in r.items() if k not in ("dpo", "eval", "runtime_s", "distributed", "wandb")}
                         for r in rounds]
    last = rounds[-1]
    results["dpo"] = {**last["dpo"], **last["eval"]}
    results["distributed"], results["wandb"] = last.get("distributed"), last.get("wandb")
    results.setdefault("sft", {})["judge_reward"] = last.get("reference_judge_reward")
    for stage in ("dpo", "eval"):
        results["runtime_s"][stage] = sum(r["runtime_s"][stage] or 0.0 for r in rounds)


def add_eval(results: dict, evaluation: EvalResult) -> None:
    results["runtime_s"]["eval"] = evaluation.runtime_s
    results.setdefault("sft", {})["judge_reward"] = evaluation.reference_judge_reward
    results.setdefault("dpo", {}).update(evaluation.metrics)


# results.json's dpo fields logged to W&B as final/<name> after evaluation; held-out pair metrics (DPO's implicit
# reward on the test pairs, from trainer.evaluate) under their own names.
FINAL_FIELDS = ("judge_reward", "reference_judge_reward", "win_rate_vs_reference", "kl_to_reference", "judge_agreement",
                "num_prompts")
FINAL_HELD_OUT = {"held_out_accuracy": "rewards/accuracies", "held_out_margin": "rewards/margins"}


def final_metrics(results: dict) -> dict[str, float]:
    """The run's final numbers for W&B (final/*), those that exist (a run without a judge has no judge reward)."""
    dpo = results.get("dpo", {})
    values = {name: dpo.get(name) for name in FINAL_FIELDS}
    values.update({name: dpo.get("held_out", {}).get(key) for name, key in FINAL_HELD_OUT.items()})
    return {f"final/{name}": value for name, value in values.items() if value is not None}


def write_results(run_dir: Path, results: dict) -> Path:
    return write_json(run_dir / RESULTS, results)
