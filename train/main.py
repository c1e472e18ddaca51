"""Entry point: SFT -> DPO -> evaluation, configured by Hydra (conf/).

    python -m train                                   # the embedded default, one process
    python -m train --cfg job                         # print the composed config
    python -m train dry_run=true                      # build everything, stop before training
    python -m train -m beta.value=0.05,0.1,0.5        # sweep beta (SFT is trained once, then reused)
    python -m train stage=sft                         # one stage on its own (sft, dpo, eval)
    accelerate launch -m train deepspeed=zero3        # several processes
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from train.config.compose import CONFIG_DIR, compose_overrides, register, sweep_combinations
from train.config.overrides import command_overrides, is_inspect_flag, with_appended
from train.config.validate import check_override_secrets
from train.core.cli import EXIT_INTERRUPTED, EXIT_STOPPED, fail, fail_on_main_process
from train.core.errors import ConfigError, Preempted, TrainingAborted
from train.core.files import read_json
from train.core.storage import storage_problem, unwritable
from train.runtime.run_output import run_output
from train.runtime.slurm import run_on_this_node, submitit_job_environment

register()


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> dict | float | None:
    from train.pipeline.run import run  # deferred: see main()
    from train.seams import close_progress_bars  # deferred: see main()

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    slurm_job = submitit_job_environment()
    if slurm_job is not None and slurm_job.num_nodes * cfg.nproc_per_node > 1:
        # A submitit task of a multi-process job: start this node's processes, which re-enter here.
        run_on_this_node(slurm_job, list(hydra_cfg.overrides.task), run_dir, cfg.nproc_per_node)
        results = read_json(run_dir / "results.json")
        if slurm_job.global_rank == 0 and results is not None:
            print(f"results: {run_dir / 'results.json'}", flush=True)
        return job_return(cfg, hydra_cfg, results)
    with run_output(run_dir):  # <run dir>/run.log, and no empty run directory left by a refused start
        try:
            results = run(cfg, run_dir, run_name=hydra_cfg.job.override_dirname or "default")
        except (ConfigError, TrainingAborted) as err:
            close_progress_bars()  # the error line starts a line of its own
            fail(str(err))
        except Preempted as stop:
            print(f"stopped: {stop}", flush=True)
            # Rerun to resume; 0 once the scheduler has requeued the job.
            sys.exit(0 if stop.requeued else EXIT_STOPPED)
        except Exception as err:  # a full or read-only disk is the user's to fix: one line, not a traceback
            problem = storage_problem(err, Path(cfg.output_root))
            if problem is None:
                raise
            close_progress_bars()
            fail(f"{problem}; free some space or set output_root=<a writable directory> (complete files were kept)")
        if not cfg.dry_run and (run_dir / "results.json").exists():
            print(f"results: {run_dir / 'results.json'}", flush=True)
    return job_return(cfg, hydra_cfg, results)


def job_return(cfg: DictConfig, hydra_cfg, results: dict | None) -> dict | float | None:
    """Hydra's basic sweeper ignores what a job returns; an optimizing one (Optuna: hydra/sweeper=beta_search)
    maximizes the float it gets: search.metric of this run."""
    if hydra_cfg.mode != RunMode.MULTIRUN or hydra_cfg.runtime.choices.get("hydra/sweeper") == "basic":
        return results
    from train.pipeline.recommend import objective  # deferred: see main()

    value = objective(results or {}, cfg.search.metric)
    print(f"search: {cfg.search.metric} = {value:.4g}", flush=True)
    return value


def precheck(argv: list[str]) -> list[str]:
    """Compose and check before Hydra does: its multi-line composition errors become one line, and a bad config
    (or a secret on the command line) fails before Hydra writes a run directory or multirun.yaml; a multirun, for
    every combination. Returns argv as Hydra must parse it: a key the config lacks as `+key=value`."""
    multirun, inspect = any(a in ("-m", "--multirun") for a in argv), any(map(is_inspect_flag, argv))
    try:
        if (overrides := command_overrides(argv)) is None:
            return argv
        check_override_secrets(overrides)
        configs = [compose_overrides(c) for c in (sweep_combinations(overrides) if multirun else [overrides])]
        for cfg, _ in [] if inspect else configs:  # --cfg and --info only print: no checks, no torch imports
            from train.pipeline.checks import check_config  # deferred: see main()

            check_config(cfg)
            if problem := unwritable(Path(cfg.output_root)):
                raise ConfigError(f"output_root={cfg.output_root}: {problem}; set output_root=<a writable directory>")
    except ConfigError as err:
        fail_on_main_process(str(err))  # every process of a launch checks the same config: one line
    return with_appended(argv, set().union(*(added for _, added in configs)))


def main() -> None:
    # The pipeline's imports (torch, transformers, TRL, DeepSpeed: seconds) are deferred: `--help` answers at once.
    from train.runtime.console import quiet_libraries

    try:
        quiet_libraries()
        sys.argv[1:] = precheck(sys.argv[1:])
        hydra_main()
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside training: what is complete on disk is kept
        print("interrupted: stopped at once; complete checkpoints and files are kept; rerun to resume", flush=True)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
