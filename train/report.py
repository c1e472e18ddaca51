"""Sweep report: `python -m train.report <sweep dir>`, and Hydra's callback that writes it when a multirun ends.

Writes summary.csv, report.md, reward_vs_kl.png and margins.png into the sweep directory
(train/pipeline/sweep_report.py says what each holds).
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode

from train import seams
from train.core.files import write_json


class SweepReportCallback(Callback):
    """Records each job's outcome in its run directory and writes the report when the multirun ends.
    conf/config.yaml names it (hydra.callbacks.sweep_report), so Hydra builds it for every run."""

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
            print(f"report: {write_report(sweep_dir)}", flush=True)


def write_report(sweep_dir: Path) -> Path:
    # Deferred on purpose: this module is imported by every `python -m train` (Hydra builds the callback at
    # start-up), and the report needs matplotlib only when a sweep ends.
    from train.pipeline.sweep_report import write_report as write

    return write(sweep_dir)


def main() -> None:
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: python -m train.report <sweep dir>")
    print(f"report: {write_report(Path(sys.argv[1]))}")


if __name__ == "__main__":
    main()
