"""Every access to a library's private attributes, in one place.

TRL, datasets, accelerate, transformers and Hydra offer no public API for these; each use says why it is
needed. tests/test_seams.py holds one canary per attribute against the installed versions, so an
upgrade that renames or drops one fails there in seconds, not in a 20-minute pipeline test.
Versions checked: trl 1.16.0, datasets 5.2.0, accelerate 1.15.0, transformers 5.24.0, hydra-core 1.3.8, wandb 0.31.0.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from accelerate.state import AcceleratorState
from tqdm import tqdm

# --- TRL's DPOTrainer ------------------------------------------------------------------------------


class ReferencePassHook:
    """Mixin for a DPOTrainer subclass: TRL's private `_precompute_ref_logps(dataset, name, batch_size)`
    (the reference pass of precompute_ref_log_probs) is routed to the subclass's public
    `reference_pass(compute, dataset, name, batch_size)`, with TRL's own method as `compute`."""

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        return self.reference_pass(super()._precompute_ref_logps, dataset, name, batch_size)

    def reference_pass(self, compute: Callable, dataset, name: str, batch_size: int):
        return compute(dataset, name, batch_size)


def release_precompute_engine(trainer) -> bool:
    """Under ZeRO-3 TRL 1.16 runs the reference pass through a DeepSpeed inference engine around the policy
    and keeps it as `_precompute_engine`; destroying it stops its hooks firing in every training step."""
    engine = getattr(trainer, "_precompute_engine", None)
    if engine is None:
        return False
    engine.destroy()
    trainer._precompute_engine = None
    return True


def precompute_model_hash(trainer) -> str:
    """TRL's hash of the loaded policy weights, part of its own reference-cache fingerprint."""
    return trainer._precompute_model_hash


def set_precompute_model_hash(trainer, value: str) -> None:
    trainer._precompute_model_hash = value


# --- datasets --------------------------------------------------------------------------------------


def dataset_fingerprint(dataset) -> str:
    """datasets' content fingerprint of a Dataset (what its own cache files are named by)."""
    return dataset._fingerprint


def has_index_mapping(dataset) -> bool:
    """True when the rows are reached through an index mapping (after select/filter), not stored flat."""
    return dataset._indices is not None


@contextmanager
def cache_file_redirected(dataset, fingerprint: str, path: str) -> Iterator[None]:
    """While the block runs, the cache file datasets would write for `fingerprint` is `path`; every other
    cache file keeps its default name. datasets derives cache file names in `_get_cache_file_path`."""
    default = dataset._get_cache_file_path
    dataset._get_cache_file_path = lambda fp: path if fp == fingerprint else default(fp)
    try:
        yield
    finally:
        del dataset._get_cache_file_path


# --- transformers and accelerate -------------------------------------------------------------------


def attn_implementation(config) -> str | None:
    """The attention implementation a loaded model really uses (transformers resolves "sdpa"/"eager" into
    `_attn_implementation`; the public constructor argument may be None)."""
    return getattr(config, "_attn_implementation", None)


# What a model class declares it can run (transformers 5.24, PreTrainedModel): sdpa and flash attention.
SUPPORT_FLAGS = {"sdpa": "_supports_sdpa", "flash_attention_2": "_supports_flash_attn",
                 "flash_attention_3": "_supports_flash_attn"}


def supports_attention(model_class, attn_implementation: str) -> bool:
    """False when `model_class` declares it cannot run `attn_implementation` (transformers raises a ValueError at
    load then); True for eager and anything it has no flag for."""
    flag = SUPPORT_FLAGS.get(attn_implementation)
    return flag is None or bool(getattr(model_class, flag))


def reset_accelerate_state() -> None:
    """Forget accelerate's process state so the next PartialState is built afresh (transformers'
    TrainingArguments does the same internally)."""
    AcceleratorState._reset_state(reset_partial_state=True)


def skip_deepspeed_shm_comm_build() -> None:
    """DeepSpeed's comm backend JIT-compiles its shared-memory all-reduce op (C++) whenever it starts on CPU: two
    compiler processes for ~40 s on the first ZeRO run of a machine, and again for each venv path. The op serves
    only `inference_all_reduce` (DeepSpeed inference); training's collectives go through the gloo group. Marked
    incompatible, `deepspeed.comm.torch.build_shm_op` returns None and nothing is compiled."""
    import deepspeed.ops  # deferred: seconds to import

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


# --- Hydra -----------------------------------------------------------------------------------------


def job_error(job_return) -> Any:
    """The exception a failed Hydra job raised (`JobReturn.return_value` re-raises it instead)."""
    return job_return._return_value


# --- wandb -----------------------------------------------------------------------------------------


@contextmanager
def offline_wandb_run_hidden() -> Iterator[None]:
    """`wandb.run` (a plain module global in wandb 0.31) reads as None inside while the run is offline. TRL's
    create_model_card, at every checkpoint save, puts `wandb.run.url` in the card; an offline run answers with
    "wandb: WARNING URL not available in offline run" on the console each time (5 lines in `make train`)."""
    import wandb  # deferred: seconds to import

    run = wandb.run
    if run is None or not run.offline:
        yield
        return
    wandb.run = None
    try:
        yield
    finally:
        wandb.run = run


# --- tqdm ------------------------------------------------------------------------------------------


def close_progress_bars() -> None:
    """Closes the tqdm bars an exception left open (TRL's reference pass, the trainer's bar). tqdm draws a bar as
    "\r<bar>" with no newline, so the `error:` line printed next continued the bar's line (seen in CI: a full disk
    during the reference pass). Closing ends each bar's line. tqdm keeps its open bars in `tqdm._instances`."""
    for bar in list(getattr(tqdm, "_instances", [])):
        bar.close()
