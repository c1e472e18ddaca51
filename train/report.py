"""Sweep report: `python -m train.report <sweep dir> [--kl-budget X]`, and Hydra's callback that writes it when a
multirun (grid sweep or search) ends.

Writes summary.csv, report.md, reward_vs_kl.png and margins.png into the sweep directory
(train/sweep/report.py says what each holds) and prints the recommended beta.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from train import seams
from train.core.files import write_json


class SweepReportCallback(Callback):
    """Records each job's outcome in its run directory and writes the report when the multirun ends.
    conf/config.yaml names it (hydra.callbacks.sweep_report), so Hydra builds it for every run. Hydra calls
    on_multirun_end after any sweeper's sweep() returns, so a search (Optuna) gets the same report."""

    def on_job_end(self, config, job_return, **kwargs) -> None:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            return
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        status = {"status": job_return.status.name}
        if job_return.status.name == "FAILED":
            status["error"] = " ".join(str(seams.job_error(job_return)).split())[:500]
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "job_status.json", status, indent=None)

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            recommendation = write_report(sweep_dir, config.report.kl_budget)
            print(f"report: {sweep_dir}\n{recommendation.line()}", flush=True)
            # A multirun of one job (`make submit` runs its job through Hydra's submitit launcher) compares
            # nothing: its run's own W&B run has everything, so no report run is added beside it.
            if len([p for p in sweep_dir.iterdir() if (p / "job_status.json").exists()]) > 1:
                log_to_wandb(config, sweep_dir, recommendation)


def write_report(sweep_dir: Path, kl_budget: Optional[float] = None):
    # Deferred on purpose: this module is imported by every `python -m train` (Hydra builds the callback at
    # start-up), and the report needs matplotlib only when a sweep ends.
    from train.sweep.report import write_report as write

    return write(sweep_dir, kl_budget)


def log_to_wandb(config: DictConfig, sweep_dir: Path, recommendation) -> None:
    """One small W&B run per sweep (job_type sweep-report, in the sweep's group next to its runs) holding the
    recommendation as its summary and the two plots. A run of its own, because writing into every trial's run
    would mean resuming each of them after it finished; a failure here loses nothing, the files are written."""
    import wandb  # deferred: seconds to import, needed once when a sweep ends (this module loads on every start)

    from train.runtime import tracking  # deferred: imports wandb too

    point = recommendation.point
    summary = {"report/metric": recommendation.metric, "report/kl_budget": recommendation.kl_budget,
               "report/recommended_beta": None if point is None else point.beta,
               "report/recommended_run": None if point is None else point.run,
               "report/recommended_value": None if point is None else point.score,
               "report/recommended_kl": None if point is None else point.kl, "report/reason": recommendation.reason,
               "report/tied_runs": ", ".join(p.run for p in recommendation.tied) if len(recommendation.tied) > 1 else None}
    if point is not None and point.interval is not None:
        summary.update({"report/recommended_ci95_low": point.interval.low, "report/recommended_ci95_high":
                        point.interval.high, "report/recommended_n": point.interval.n})
    try:
        run = tracking.start_run(config, {"report": summary, "sweep_dir": str(sweep_dir)}, sweep_dir,
                                 "sweep-report", f"{config.experiment}-report")
        if run is None:
            return
        run.log({f"report/{name}": wandb.Image(str(sweep_dir / f"{name}.png")) for name in ("reward_vs_kl", "margins")})
        run.summary.update({k: v for k, v in summary.items() if v is not None})
        tracking.finish(run)
    except Exception as err:  # the report is on disk already; W&B is a copy of it
        print(f"wandb: sweep report not logged ({type(err).__name__}: {' '.join(str(err).split())[:200]})", flush=True)


def budget_from_runs(sweep_dir: Path) -> Optional[float]:
    """report.kl_budget as the sweep was run with it (each run's config.yaml), so a rerun reports the same."""
    for config in sorted(sweep_dir.glob("*/config.yaml")):
        budget = OmegaConf.select(OmegaConf.load(config), "report.kl_budget")
        if budget is not None:
            return float(budget)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m train.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--kl-budget", type=float, default=None,
                        help="recommend the best beta with KL <= this (default: report.kl_budget the runs used)")
    args = parser.parse_args()
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is not a directory")
    if args.kl_budget is not None and args.kl_budget < 0:
        parser.error(f"--kl-budget {args.kl_budget}: a KL budget is >= 0 nats per sample")
    budget = args.kl_budget if args.kl_budget is not None else budget_from_runs(args.sweep_dir)
    recommendation = write_report(args.sweep_dir, budget)
    print(f"report: {args.sweep_dir}\n{recommendation.line()}")


if __name__ == "__main__":
    main()
