"""Entry point: SFT -> DPO -> evaluation, configured by Hydra (conf/).

    python -m train                                   # the embedded default, one process
    python -m train --cfg job                         # print the composed config
    python -m train dry_run=true                      # build everything, stop before training
    python -m train -m beta.value=0.05,0.1,0.5        # sweep beta (SFT is trained once, then reused)
    python -m train stage=sft                         # one stage on its own (sft, dpo, eval)
    accelerate launch -m train deepspeed=zero3        # several processes
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from launch.nodes import run_on_this_node, submitit_job_environment
from train.config import ConfigError, register_resolvers, validate
from train.schema import register_configs

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

register_resolvers()
register_configs()


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from train.pipeline import Preempted, run
    from train.trainer import TrainingAborted

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    slurm_job = submitit_job_environment()
    if slurm_job is not None and slurm_job.num_nodes * cfg.nproc_per_node > 1:
        run_on_this_node(slurm_job, list(hydra_cfg.overrides.task), run_dir, cfg.nproc_per_node)
        results = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").exists() else None
        if slurm_job.global_rank == 0 and results is not None:
            print(f"results: {run_dir / 'results.json'}", flush=True)
        return results
    try:
        results = run(cfg, run_dir, run_name=hydra_cfg.job.override_dirname or "default")
    except (ConfigError, TrainingAborted) as err:
        fail(str(err))
    except Preempted as stop:
        print(f"stopped: {stop}", flush=True)
        # 75 (EX_TEMPFAIL): stopped early, rerun to resume; 0 once the scheduler has requeued the job.
        sys.exit(0 if stop.requeued else 75)
    if not cfg.dry_run and (run_dir / "results.json").exists():
        print(f"results: {run_dir / 'results.json'}", flush=True)
    return results


def precheck(argv: list[str]) -> None:
    """Compose and validate once before Hydra does: its multi-line composition errors become one line,
    and a bad config fails before Hydra creates the run directory."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if any(a.startswith("-") for a in argv):  # --cfg, -m, --help ...: leave those to Hydra
        return
    overrides = [a for a in argv if not a.startswith(("hydra.", "hydra/", "+hydra"))]
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        fail(one_line(err))
    try:
        validate(cfg)
    except ConfigError as err:
        fail(str(err))


def one_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    if "Could not find" in text and "Available options" in text:
        head, options = text.split("Available options in", 1)
        return f"{head.replace('In ' + repr('config') + ': ', '').strip()}; available options in{options}"
    return text


def quiet_libraries() -> None:
    """Progress bars of every map() and weight load drown the training log; the trainer's own bar stays."""
    import warnings

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)


def main() -> None:
    quiet_libraries()
    precheck(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
