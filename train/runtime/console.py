"""What the console shows: library progress bars and known-harmless warnings are kept out of the log."""

from __future__ import annotations

import warnings

import datasets
import transformers


def quiet_libraries() -> None:
    """Progress bars of every map() and weight load drown the training log; the trainer's own bar stays."""
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
