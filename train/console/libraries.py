"""What the console shows: library progress bars and known-harmless warnings are kept out of the log.

Three warning families are filtered, each by its message and its source, so that every other warning still shows
(tests/test_console.py proves both sides). Seen in `make train` and `NPROC=2 make train ARGS="deepspeed=zero3
debug=fast"` with torch 2.13 CPU, transformers 5.24, DeepSpeed 0.19.8:
  - torch's DataLoader: "'pin_memory' argument is set as true but no accelerator is found" (UserWarning, once per
    dataloader: 4 times a run, 2 lines each). transformers sets pin_memory=True by default; on a GPU it is right.
  - torch's deprecation of the collectives DeepSpeed's ZeRO calls, `all_gather_into_tensor` and
    `reduce_scatter_tensor` (FutureWarning from torch.distributed.c10d_logger): 745 warnings (105 + 640), 1,490 of
    the 1,533 lines of the 2-process ZeRO-3 debug run (53 lines with the filter). DeepSpeed has to change its
    calls; a user can do nothing.
  - transformers' "torch.distributed process group is initialized, but parallel_mode != ParallelMode.DISTRIBUTED"
    (logger transformers.training_args, printed as "[transformers] ..."): any TrainingArguments built while a
    process group is up without accelerate knowing of it (reproduced: a 1-rank gloo group, then
    TrainingArguments(...).device), as config checks and in-process sweeps do after a DeepSpeed stage; the
    trainers themselves get their process group from train/runtime/distributed.py.
"""

from __future__ import annotations

import logging
import re
import warnings

import datasets
import transformers

# (message regex, category, module regex of the code the warning is attributed to)
HARMLESS_WARNINGS = (
    (r"'pin_memory' argument is set as true but no accelerator is found", UserWarning,
     r"torch\.utils\.data\.dataloader"),
    (r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated", FutureWarning,
     r"torch\.distributed\."),
)
# (logger name, message regex)
HARMLESS_LOG_RECORDS = (
    ("transformers.training_args", r"torch\.distributed process group is initialized, but parallel_mode != "
                                   r"ParallelMode\.DISTRIBUTED"),
)


class DropMatching(logging.Filter):
    """Drops a logger's records whose message matches `pattern`; every other record passes."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def filter_harmless_warnings() -> None:
    """Installs the filters above; calling it again adds nothing (filterwarnings replaces an equal entry)."""
    for message, category, module in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, pattern in HARMLESS_LOG_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMatching) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(DropMatching(pattern))


def quiet_libraries() -> None:
    """Progress bars of every map() and weight load drown the training log; the trainer's own bar stays."""
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
    filter_harmless_warnings()
