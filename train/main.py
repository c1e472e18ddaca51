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
from train.core.cli import EXIT_INTERRUPTED, exit_codes, fail_on_main_process
from train.core.errors import ConfigError
from train.core.storage import unwritable
from train.runtime.run_output import run_output
from train.runtime.slurm import hand_over_to_node

register()


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> dict | float | None:
    from train.pipeline.run import run  # deferred: see main()
    from train.seams import close_progress_bars  # deferred: see main()

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    # A submitit task of a multi-process job starts this node's processes, which re-enter here.
    if (handed := hand_over_to_node(list(hydra_cfg.overrides.task), run_dir, cfg.nproc_per_node)) is not None:
        return job_return(cfg, hydra_cfg, handed.results)
    with run_output(run_dir):  # <run dir>/run.log, and no empty run directory left by a refused start
        with exit_codes(cfg.output_root, close_progress_bars):
            results = run(cfg, run_dir, run_name=hydra_cfg.job.override_dirname or "default")
        if not cfg.dry_run and (run_dir / "results.json").exists():
            print(f"results: {run_dir / 'results.json'}", flush=True)
    return job_return(cfg, hydra_cfg, results)


def job_return(cfg: DictConfig, hydra_cfg, results: dict | None) -> dict | float | None:
    """Hydra's basic sweeper ignores what a job returns; an optimizing one (Optuna: hydra/sweeper=beta_search)
    maximizes the float it gets: search.metric of this run."""
    if hydra_cfg.mode != RunMode.MULTIRUN or hydra_cfg.runtime.choices.get("hydra/sweeper") == "basic":
        return results
    from train.sweep.recommend import objective  # deferred: see main()

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
            from train.pipeline.checks import start_plan  # deferred: see main()

            start_plan(cfg)  # kept for this combination's run() in this process: checked once
            if problem := unwritable(Path(cfg.output_root)):
                raise ConfigError(f"output_root={cfg.output_root}: {problem}; set output_root=<a writable directory>")
    except ConfigError as err:
        fail_on_main_process(str(err))  # every process of a launch checks the same config: one line
    return with_appended(argv, set().union(*(added for _, added in configs)))


def main() -> None:
    # The pipeline's imports (torch, transformers, TRL, DeepSpeed: seconds) are deferred: `--help` answers at once.
    from train.console.libraries import quiet_libraries

    try:
        quiet_libraries()
        sys.argv[1:] = precheck(sys.argv[1:])
        hydra_main()
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside training: what is complete on disk is kept
        print("interrupted: stopped at once; complete checkpoints and files are kept; rerun to resume", flush=True)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
