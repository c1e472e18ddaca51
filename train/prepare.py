"""Inspect a data config without training: convert, validate, write every converted pair as JSON lines
(the training pairs to `out`, the held-out pairs next to it as <out>.test.jsonl).

    python -m train.prepare data=hh_rlhf out=hh_pairs.jsonl
    python -m train.prepare data=hh_rlhf data.source=path/to/hh-rlhf out=hh_pairs.jsonl
    python -m train.prepare data=custom data.source=mine.csv data.columns.prompt=question out=pairs.jsonl

Composes the same Hydra config as `python -m train` and builds the tokenizer the run would use, so the
report (printed, also written next to `out` as <out>.report.json) counts exactly what training would
drop. Exit 0 under data.max_drop_fraction; above it the pairs are still written (to look at) and it
exits 2 with one `error: ...` line, as `python -m train` would.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from train.config.schema import MainConfig

from train.config.compose import compose
from train.console.libraries import quiet_libraries
from train.core.cli import fail
from train.core.errors import ConfigError
from train.data import prepare
from train.data.validation import format_report, threshold_message
from train.models.loading import ensure_base_model, load_tokenizer
from train.pipeline.checks import check_config

USAGE = "usage: python -m train.prepare data=<name> [data.source=<path>] [<override> ...] out=<file.jsonl>"


def split_out(argv: list[str]) -> tuple[Path, list[str]]:
    """`out=` (or `+out=`) is ours; everything else is a Hydra override."""
    outs = [a.split("=", 1)[1] for a in argv if a.startswith(("out=", "+out="))]
    if len(outs) != 1 or not outs[0]:
        raise SystemExit(f"error: give out=<file.jsonl> once\n{USAGE}")
    return Path(outs[0]), [a for a in argv if not a.startswith(("out=", "+out="))]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    out, overrides = split_out(argv)
    quiet_libraries()
    try:
        write_pairs(check_config(compose(overrides)).config, out)
    except ConfigError as err:
        fail(str(err))
    return 0


def write_pairs(cfg: MainConfig, out: Path) -> None:
    tokenizer = load_tokenizer(cfg.model, ensure_base_model(cfg.model), cfg.data.conversational)
    files, report = prepare(cfg, tokenizer)
    print(format_report(report), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    test_out = out.with_suffix(".test.jsonl")
    shutil.copyfile(files["train_pairs"], out)  # already one {prompt, chosen, rejected} object per line
    shutil.copyfile(files["test_pairs"], test_out)
    out.with_suffix(".report.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {report['pairs']['train']} train pairs to {out} and {report['pairs']['test']} held-out pairs "
          f"to {test_out}", flush=True)
    problem = threshold_message(report, need_test=False)  # a source too small to hold out from is still inspected
    if problem:
        raise ConfigError(problem)


if __name__ == "__main__":
    sys.exit(main())
