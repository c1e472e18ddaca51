"""The pipeline, top to bottom: checks -> data -> SFT -> DPO -> evaluate -> results.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml
from omegaconf import DictConfig, OmegaConf

from train.config.choices import Stage
from train.config.schema import MainConfig
from train.console.summary import print_settings, print_summary
from train.core.errors import ConfigError
from train.core.files import COMPLETE, is_complete, mark_complete, read_json, write_json
from train.core.locks import hold_exclusive
from train.core.ranks import is_main_process, num_machines
from train.core.trees import flatten
from train.data import PreferenceData, load_preference_data
from train.memory.offload import check_offload_memory
from train.models.adapters import check_target_modules
from train.models.judges import check_reward_model
from train.models.loading import ensure_base_model, load_tokenizer
from train.pipeline.checks import start_plan
from train.pipeline.dpo import run_dpo
from train.pipeline.dry_run import dry_run
from train.pipeline.evaluate import run_eval
from train.pipeline.results import add_dpo, add_rounds, add_eval, add_sft, final_metrics, start_results, write_results
from train.pipeline.reward import run_reward_stage
from train.pipeline.rounds import check_rounds, on_policy, run_rounds
from train.pipeline.sft import require_model, run_sft, sft_output_dir
from train.runtime import tracking
from train.runtime.run_output import keep_log
from train.runtime.safe_load import enforce_weights_only
from train.trainer.checkpoint import checkpoints, prune_at_end
from train.trainer.start_plan import StartPlan


def run(cfg: DictConfig, run_dir: Path, run_name: str) -> dict[str, Any]:
    # Before anything is written: a failed start leaves earlier runs untouched. Checked once per process: the
    # entry point's check of this config, when it made one; from here on the run reads the plan's typed config.
    plan = start_plan(cfg)
    config, resolved = plan.config, plan.resolved
    enforce_weights_only(config.deepspeed.config is not None)  # before any file is unpickled, on every rank
    if not config.dry_run and finished(config, resolved, run_dir):
        done = read_json(run_dir / "results.json")
        if not isinstance(done, dict):
            raise ConfigError(f"{run_dir} is marked finished but has no results.json: train it again with "
                              "resume.enabled=false")
        print_summary(done, run_dir, checkpoints(run_dir / "dpo"))
        return done
    print_settings(config, run_dir)
    base_path = ensure_base_model(config.model)
    check_target_modules(config, base_path)  # LoRA layer names, against the model's own (its config, no weights)
    check_offload_memory(config.deepspeed.config, base_path, config.model.trust_remote_code, num_machines())
    data = load_preference_data(config, load_tokenizer(config.model, base_path, config.data.conversational))
    check_reward_model(config.judge, config.data.conversational)  # its config and tokenizer now (no weights read)
    check_rounds(config, data)  # on-policy rounds: labeler, prompt sources, models given
    if config.dry_run:
        return dry_run(plan, base_path, data, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_run_dir(run_dir)
    keep_log(run_dir)  # the run has its directory: what it printed so far, and from now on, into run.log
    if config.stage == Stage.all and is_main_process():
        (run_dir / COMPLETE).unlink(missing_ok=True)  # trained again (resume.enabled=false): unfinished until the end
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    if data.report and is_main_process():
        write_json(run_dir / "data_report.json", data.report)
    return run_stages(plan, base_path, data, run_dir, run_name)


def run_stages(plan: StartPlan, base_path: str, data: PreferenceData, run_dir: Path, run_name: str) -> dict[str, Any]:
    """The stages `stage` asks for, each handed what it reads of the plan's config; results.json at the end."""
    cfg, resolved = plan.config, plan.resolved
    results = start_results(cfg, run_dir)
    sft_path = sft_output_dir(cfg)
    if cfg.stage in (Stage.all, Stage.sft):
        add_sft(results, run_sft(plan, base_path, sft_path, data, run_dir))
    if cfg.stage == Stage.reward:  # not part of stage=all: SFT (trained or reused), then the reward model
        run_reward_stage(plan, base_path, sft_path, data, run_dir, run_name, results)
    wandb_run = None
    # With SFT off, DPO starts from the base model itself, which is then also the reference.
    reference = require_model(sft_path, "sft") if cfg.sft.enabled else base_path
    if cfg.stage in (Stage.all, Stage.dpo) and cfg.dpo.enabled:
        # A restarted run (requeue, rerun) continues its W&B run: the id is kept in the run directory.
        wandb_run = tracking.start_run(cfg, resolved, run_dir, "dpo", run_name,
                                       tracking.stored_run_id(run_dir, cfg.resume))
        tracking.log_summary(wandb_run, {f"data/{k}": v for k, v in flatten(data.report).items()})
        if on_policy(cfg.generate):  # the rounds evaluate each policy they train: the last one is the run's
            add_rounds(results, run_rounds(plan, reference, base_path, data, run_dir, wandb_run))
            tracking.log_summary(wandb_run, final_metrics(results))
        else:
            add_dpo(results, run_dpo(plan, reference, data, run_dir, wandb_run))
    evaluated = on_policy(cfg.generate) and cfg.stage in (Stage.all, Stage.dpo)
    if cfg.stage in (Stage.all, Stage.eval) and cfg.dpo.enabled and cfg.eval.enabled and not evaluated:
        evaluation = run_eval(cfg, require_model(run_dir / "policy", "dpo"), reference, data, run_dir)
        add_eval(results, evaluation)
        if wandb_run is None:  # stage=eval on its own: add to the DPO stage's W&B run
            wandb_run = tracking.start_run(cfg, resolved, run_dir, "dpo", run_name, results.get("wandb", {}).get("run_id"))
        tracking.log_summary(wandb_run, final_metrics(results))
    tracking.finish(wandb_run)
    if is_main_process():
        write_results(run_dir, results)
        if cfg.stage in (Stage.all, Stage.eval):
            mark_complete(run_dir)  # last: a rerun of the same command finds the run finished
            prune_at_end(run_dir / "dpo", run_dir / "policy", cfg.checkpoint.keep_at_end)
    print_summary(results, run_dir, checkpoints(run_dir / "dpo"))
    return results


def finished(cfg: MainConfig, resolved: Mapping[str, Any], run_dir: Path) -> bool:
    """A finished run is left as it is: rerunning it used to "resume" from its last checkpoint, train nothing
    and overwrite results.json with less. Training it again is an explicit choice (resume.enabled=false)."""
    if cfg.stage != Stage.all or not cfg.resume.enabled or not is_complete(run_dir):
        return False
    changes = config_changes(run_dir / "config.yaml", dict(resolved))
    if changes:
        listed = [f"{key} {old} -> {new}" for key, (old, new) in changes.items()]
        shown = ", ".join(listed[:MAX_CHANGES_SHOWN]) + (f" and {len(listed) - MAX_CHANGES_SHOWN} more"
                                                         if len(listed) > MAX_CHANGES_SHOWN else "")
        # Only sampling or judging differs: the trained policy is the same, judging it again is enough.
        again = ("judge it again there (stage=eval)" if all(k.startswith(("eval.", "judge.")) for k in changes)
                 else "train there again from scratch (resume.enabled=false)")
        raise ConfigError(f"{run_dir} holds a finished run made with another config ({shown}): give this run its own "
                          f"directory (name=<new name>), or {again}")
    print(f"finished: {run_dir} is a finished run; its results are in {run_dir / 'results.json'} "
          "(to judge it again: stage=eval; to train it again from scratch: resume.enabled=false)", flush=True)
    return True


# Keys that change neither what is trained nor what is measured (where outputs go, logging, checkpoints, how a
# restart behaves): a finished run rerun with other values of these is still the same run. The run directory's
# name leaves out a similar list (conf/config.yaml, hydra.job.config.override_dirname.exclude_keys).
SAME_RUN_KEYS = ("stage", "dry_run", "output_root", "nproc_per_node", "name", "experiment", "wandb", "report", "search",
                 "plan", "resume", "checkpoint", "faults")
MAX_CHANGES_SHOWN = 4
UNSET = object()  # a key one of the two configs lacks (a trainer argument added with +dpo.args.<key>=...)


def config_changes(saved_path: Path, current: dict) -> dict[str, tuple]:
    """key -> (old, new) for each setting of `current` that differs from the finished run's config.yaml (none
    when it has no readable config.yaml: nothing to compare). Paths under each run's output_root compare as
    relative to it, so a moved output root is still the same run."""
    try:
        saved = OmegaConf.to_container(OmegaConf.load(saved_path))
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    if not isinstance(saved, dict):
        return {}
    # A top-level key only one side has came (or went) with newer code, not with this command: skipped, so an
    # upgrade leaves finished runs finished.
    saved, current = ({k: v for k, v in c.items() if k in saved and k in current} for c in (saved, current))
    # Both through the same YAML writer and reader, so each value compares as it was written.
    old, new = (comparable(OmegaConf.to_container(OmegaConf.create(OmegaConf.to_yaml(c)))) for c in (saved, current))
    return {key: (old.get(key, "(unset)"), new.get(key, "(unset)")) for key in sorted(old.keys() | new.keys())
            if old.get(key, UNSET) != new.get(key, UNSET)}


def comparable(config: dict) -> dict:
    root = str(config.get("output_root", ""))
    flat = {k: v for k, v in flatten(config, ".").items() if k.split(".")[0] not in SAME_RUN_KEYS}
    under = root.rstrip("/") + "/"
    return {k: "<output_root>/" + v[len(under):] if root and isinstance(v, str) and v.startswith(under) else v
            for k, v in flat.items()}


def lock_run_dir(run_dir: Path) -> None:
    """One run per directory: a second run with the same overrides (same directory, SFT temp directory and
    W&B run id) stops here. The lock dies with its process, so a crashed run never blocks its rerun."""
    if not is_main_process():
        return
    holder = hold_exclusive(run_dir / ".run.lock")
    if holder is not None:
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
        raise ConfigError(f"another run is using {run_dir} ({who}): wait for it or stop it, or give this run "
                          "another directory (name=<name>)")
