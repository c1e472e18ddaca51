"""On-policy preference rounds (generate=on_policy): for each round, pick prompts, sample answers from the model
being tuned, label them, pair them, train DPO from that model, evaluate. Round k+1 samples from round k's policy.

Pairs sampled from the policy being trained beat offline pairs (Xiong et al. 2024, "Iterative preference learning
from human feedback"; Tajwar et al. 2024, "Preference fine-tuning of LLMs should leverage suboptimal, on-policy data").

Each round lives in <run dir>/rounds/round-<k>/: answers/ and labels/ (chunk files, train/pipeline/answers.py),
pairs/train.jsonl (TRL's format, with the scores, models and samples; usable as data=custom data.source=<that dir>),
dpo/ (checkpoints), policy/, eval_samples.jsonl and round.json. A finished round is never redone; a stopped one
resumes from its chunk files and its DPO checkpoint. The last round's policy is the run's (<run dir>/policy).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from train.config.choices import GenerateKind, LabelerKind, Reference, RoundReference, Stage
from train.config.onpolicy_schema import GenerateConfig
from train.config.schema import ColumnsSpec, LabelerConfig, MainConfig
from train.core.errors import AwaitingLabels, ConfigError
from train.core.files import is_complete, mark_complete, read_json, write_json, write_jsonl
from train.core.ranks import is_main_process, world_size
from train.data import PreferenceData, load_preference_data
from train.data.prompts import format_report, select_prompts
from train.data.rows import prompt_key
from train.models.labelers import check_labeler, format_counts, make_pairs
from train.models.loading import load_tokenizer
from train.pipeline.answers import generate_answers, label_answers, resolve_models
from train.pipeline.dpo import run_dpo
from train.pipeline.evaluate import run_eval
from train.runtime import tracking
from train.runtime.distributed import barrier
from train.trainer.start_plan import StartPlan

PAIRS = "pairs"


def on_policy(generate: GenerateConfig) -> bool:
    return generate.kind == GenerateKind.on_policy


def check_rounds(cfg: MainConfig, data: PreferenceData) -> None:
    """At start, before any model is trained: settings, the labeler (its config, no weights), the prompt sources
    (read now: a failing query or an empty file stops here) and the model paths given. One line each."""
    if not on_policy(cfg.generate):
        return
    g = cfg.generate
    for key, least in (("rounds", 1), ("num_samples", 2), ("max_new_tokens", 1), ("batch_size", 1),
                       ("chunk_prompts", 1)):
        if getattr(g, key) < least:
            why = ": a pair needs two answers to one prompt" if key == "num_samples" else ""
            raise ConfigError(f"generate.{key}={getattr(g, key)}: must be at least {least}{why}")
    if g.temperature < 0 or not 0 < g.top_p <= 1:
        raise ConfigError(f"generate.temperature={g.temperature} / generate.top_p={g.top_p}: need temperature >= 0 "
                          "and 0 < top_p <= 1")
    if cfg.dpo.reference == Reference.lora:
        raise ConfigError("generate=on_policy with dpo.reference=lora: each round starts from the previous round's "
                          "full weights; use dpo.reference=model or dpo.reference=precomputed")
    if not cfg.dpo.enabled or cfg.stage not in (Stage.all, Stage.dpo):
        return
    check_labeler(cfg.labeler, cfg.data.conversational)
    select_prompts(g.prompts, data_prompts(data), cfg.seed + 1, where="generate.prompts")
    resolve_models(cfg.generate, Path("policy"), Path("sft"), "base")  # the paths given; policy/sft/base exist by then


def data_prompts(data: PreferenceData) -> list:
    """The data group's training prompts, each once, in order."""
    seen, out = set(), []
    for prompt in data.train_pairs["prompt"]:
        key = prompt_key(prompt)
        if key not in seen:
            seen.add(key)
            out.append(prompt)
    return out


def run_rounds(plan: StartPlan, sft: Path, base: str, data: PreferenceData, run_dir: Path, wandb_run) -> list[dict]:
    """Every round in order; one record per round (the last one's `dpo` and `eval` are the run's)."""
    records = []
    policy = sft
    total = plan.config.generate.rounds
    for k in range(1, total + 1):
        round_dir = run_dir / "rounds" / f"round-{k}"
        if is_complete(round_dir) and isinstance(read_json(round_dir / "round.json"), dict):
            record = read_json(round_dir / "round.json")
            print(f"== round {k}/{total}: finished before; its policy is {round_dir / 'policy'} ==", flush=True)
        else:
            record = run_round(plan, k, policy, sft, base, data, round_dir, wandb_run)
        records.append(record)
        policy = round_dir / "policy"
        tracking.log_summary(wandb_run, {f"rounds/{k}/{key}": v for key, v in record.items()
                                         if isinstance(v, (int, float)) and not isinstance(v, bool)})
    if is_main_process():
        link = run_dir / "policy"
        if link.is_symlink() or not link.exists():
            link.unlink(missing_ok=True)
            link.symlink_to(os.path.relpath(policy, run_dir))
    barrier()
    return records


def run_round(plan: StartPlan, k: int, policy: Path, sft: Path, base: str, data: PreferenceData, round_dir: Path,
              wandb_run) -> dict:
    cfg = plan.config
    total, g = cfg.generate.rounds, cfg.generate
    prompts, prompt_report = select_prompts(g.prompts, data_prompts(data), cfg.seed + k, where="generate.prompts")
    models = resolve_models(g, policy, sft, base)
    source = "the SFT model" if k == 1 else f"round {k - 1}'s policy"
    names = ", ".join(source if name == "policy" else name for name, _ in models)
    if is_main_process():
        print(f"== round {k}/{total}: sampling {g.num_samples} answers for {len(prompts)} prompts from {names} on "
              f"{world_size()} process{'es' if world_size() > 1 else ''} ==", flush=True)
        for line in format_report(prompt_report):
            print(line, flush=True)
    answers = generate_answers(cfg, models, prompts, round_dir, k)
    if cfg.labeler.kind == LabelerKind.annotations:  # people label: the pairs come from train.annotate import
        pairs, counts, empty = annotated_pairs(round_dir, k), {}, 0
        made = f"pairs: {len(pairs)} imported from {round_dir / ANNOTATIONS}"
    else:
        scores = label_answers(cfg, models, len(prompts), round_dir)
        groups, empty = group_answers(answers, scores)
        pairs, counts = make_pairs(groups, cfg.data.ranking)  # the same on every rank
        made = f"{len(answers) - empty} answers ({empty} empty left out); {format_counts(counts)}"
    pairs = [{**p, "round": k} for p in pairs]
    chosen = sum(p["score_chosen"] for p in pairs) / len(pairs)
    rejected = sum(p["score_rejected"] for p in pairs) / len(pairs)
    if is_main_process():
        print(f"labels: {labeler_name(cfg.labeler)} on {made}; mean score chosen {chosen:.3f} / rejected {rejected:.3f}",
              flush=True)
        (round_dir / PAIRS).mkdir(parents=True, exist_ok=True)
        write_pairs(round_dir / PAIRS, pairs, data)
    barrier()
    round_data = load_round_data(cfg, round_dir / PAIRS, data,
                                 load_tokenizer(cfg.model, str(policy), cfg.data.conversational))
    reference = sft if k == 1 or g.reference == RoundReference.sft else policy
    dpo = run_dpo(plan, reference, round_data, round_dir, wandb_run, start_from=policy)
    evaluation = run_eval(cfg, round_dir / "policy", sft, data, round_dir) if cfg.eval.enabled else None
    metrics = evaluation.metrics if evaluation else {}
    record = {"round": k, "prompts": len(prompts), "answers": len(answers), "empty_answers": empty, "pairs": len(pairs),
              "tied_prompts": counts.get("tied_prompts"), "ties_skipped": counts.get("ties_skipped"),
              "labeler": labeler_name(cfg.labeler), "label_mean_chosen": chosen, "label_mean_rejected": rejected,
              "judge_reward": metrics.get("judge_reward"), "kl_to_sft": metrics.get("kl_to_reference"),
              "win_rate_vs_sft": metrics.get("win_rate_vs_reference"),
              "held_out_accuracy": dpo.held_out.get("rewards/accuracies"), "dpo_steps": dpo.steps,
              "policy_path": str(round_dir / "policy"), "prompt_sources": prompt_report,
              "runtime_s": {"dpo": dpo.runtime_s, "eval": evaluation.runtime_s if evaluation else None},
              "dpo": dpo.record(), "eval": metrics, "reference_judge_reward": metrics.get("reference_judge_reward"),
              "distributed": dpo.distributed, "wandb": dpo.wandb}
    if is_main_process():
        write_json(round_dir / "round.json", record)
        mark_complete(round_dir)
    barrier()
    return record


ANNOTATIONS = "annotations"


def annotated_pairs(round_dir: Path, k: int) -> list[dict]:
    """labeler=annotations: the pairs `python -m train.annotate import ... out=<round dir>/annotations` wrote; until
    they exist the run stops (exit 75) saying what to run, and the same command then continues this round."""
    path = round_dir / ANNOTATIONS / "train.jsonl"
    if not path.is_file():
        project = f"{round_dir.parents[1].name}-round-{k}"
        raise AwaitingLabels(
            f"round {k} waits for labels from people: (1) python -m train.annotate export answers={round_dir / 'answers'} "
            f"scheme=best_worst guidelines=<your guidelines.md> project={project} (make annotate-up starts a local "
            f"Label Studio); (2) label the tasks in Label Studio; (3) python -m train.annotate import project={project} "
            f"out={round_dir / ANNOTATIONS}; (4) run this command again")
    pairs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not pairs:
        raise ConfigError(f"{path} holds no pairs: label more tasks (ties never pair) and import again")
    return pairs


def group_answers(answers: list[dict], scores: list[float]) -> tuple[list[dict], int]:
    """One group per prompt, in the prompts' order, holding every model's answers with their scores; and the number
    of empty answers left out (a model that ends its turn at once: a pair with an empty side is dropped as bad data
    anyway, so it never enters the ranking)."""
    groups: dict[str, dict] = {}
    empty = 0
    for answer, score in zip(answers, scores, strict=True):
        group = groups.setdefault(answer["prompt_id"], {"prompt": answer["prompt"], "answers": []})
        if not answer["answer"].strip():
            empty += 1
            continue
        group["answers"].append({"text": answer["answer"], "model": answer["model"], "sample": answer["sample"],
                                 "score": score})
    return list(groups.values()), empty


def labeler_name(labeler: LabelerConfig) -> str:
    kind = labeler.kind
    return f"reward_model:{labeler.name_or_path}" if kind == LabelerKind.reward_model else str(kind)


def write_pairs(directory: Path, pairs: list[dict], data: PreferenceData) -> None:
    """train.jsonl: the round's pairs; test.jsonl: the data group's held-out pairs, so every round (and offline DPO)
    is measured on the same pairs."""
    write_jsonl(directory / "train.jsonl", pairs)
    write_jsonl(directory / "test.jsonl", [dict(row) for row in data.test_pairs])


def load_round_data(cfg: MainConfig, pairs_dir: Path, data: PreferenceData, tokenizer) -> PreferenceData:
    """The round's pairs through the same validation as any custom file (token checks against dpo.args.max_length,
    duplicates, the report); SFT rows and evaluation prompts stay the data group's."""
    round_data = dataclasses.replace(cfg.data, name="custom", source=str(pairs_dir.resolve()), subset=None,
                                     data_dir=None, revision=None, train_split="train", test_split="test",
                                     sft_split=None, eval_split=None, max_rows=None, synthetic=None,
                                     columns=ColumnsSpec())
    round_cfg = dataclasses.replace(cfg, data=round_data)
    try:
        paired = load_preference_data(round_cfg, tokenizer)
    except ConfigError as err:
        raise ConfigError(f"round pairs in {pairs_dir}: {err}") from None
    return PreferenceData(sft=data.sft, train_pairs=paired.train_pairs, test_pairs=paired.test_pairs,
                          eval_prompts=data.eval_prompts,
                          files={**data.files, "train_pairs": paired.files["train_pairs"],
                                 "test_pairs": paired.files["test_pairs"]},
                          report=paired.report)
