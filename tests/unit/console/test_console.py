"""What the console shows: a banner per stage, the key settings at start, a line of numbers per
logging step instead of transformers' dict of strings, a summary block at the end, and exactly three families of
known-harmless library warnings filtered while every other warning still shows."""

from __future__ import annotations

import logging
import warnings
from types import SimpleNamespace

import torch

from helpers.runs import process_state_restored
from helpers.sizes import TINY
from train.config.compose import compose
from train.console.banners import eval_banner, training_banner
from train.console.libraries import filter_harmless_warnings
from train.console.progress import format_log_line
from train.console.summary import settings_lines, summary_lines
from train.pipeline.run import run
from helpers.typed import typed

DPO_LOG = {"loss": 0.69314, "grad_norm": 0.6117, "learning_rate": 0.001, "beta": 0.1, "bad_steps": 0,
           "entropy": 4.107, "logits/chosen": -4.12, "rewards/accuracies": 0.75, "rewards/margins": 0.1234,
           "throughput/tokens_per_s": 28390.4, "throughput/mfu": 0.17, "epoch": 0.16}


def test_a_logging_step_is_one_line_of_numbers():
    assert format_log_line("dpo", 10, 63, DPO_LOG) == (
        "dpo step 10/63 loss 0.6931 rewards/accuracies 0.750 margins 0.123 beta 0.1 lr 1.0e-03 grad_norm 0.612 "
        "tokens/s 28390")
    sft = {"loss": 4.3, "mean_token_accuracy": 0.0716, "learning_rate": 0.002981, "grad_norm": 0.65,
           "num_tokens": 1.6e4}
    assert format_log_line("sft", 20, 188, sft) == (
        "sft step 20/188 loss 4.3000 token_accuracy 0.072 lr 3.0e-03 grad_norm 0.650")
    assert format_log_line("dpo", 12, 63, {**DPO_LOG, "bad_steps": 2}).endswith("tokens/s 28390 bad_steps 2")
    assert format_log_line("dpo", 3, 9, {"loss": "nan?", "beta": None}) == "dpo step 3/9"  # strings and None left out


def test_held_out_and_closing_records_get_their_own_line():
    held_out = {"eval_loss": 0.3162, "eval_rewards/accuracies": 0.9492, "eval_rewards/margins": 1.1294, "epoch": 1.0}
    assert format_log_line("dpo", 63, 63, held_out) == (
        "dpo held-out at step 63/63: loss 0.3162 rewards/accuracies 0.949 margins 1.129")
    closing = {"train_runtime": 6.404, "train_samples_per_second": 312.3, "train_loss": 0.41738, "epoch": 1.0}
    assert format_log_line("dpo", 63, 63, closing) == "dpo done: 63 steps in 6.4 s, mean train loss 0.4174"


def trainer_args(**kw):
    base = dict(per_device_train_batch_size=32, gradient_accumulation_steps=1, max_steps=-1, num_train_epochs=2,
                warmup_steps=0)
    return SimpleNamespace(**{**base, **kw})


def test_stage_banners_say_what_runs_where_and_how_long():
    assert training_banner("sft", trainer_args(), 3000, 1, "rows") == (
        "== sft: training 188 optimizer steps on 1 process (batch 32 x 1 accumulation x 1 process = 32 rows/step; "
        "3000 rows, 2 epochs) ==")
    args = trainer_args(per_device_train_batch_size=8, gradient_accumulation_steps=2, max_steps=5)
    dpo = training_banner("dpo", args, 2000, 2, "pairs", "beta 0.1 (constant), reference model, ZeRO-3")
    assert dpo == ("== dpo: training 5 optimizer steps on 2 processes (batch 8 x 2 accumulation x 2 processes = 32 "
                   "pairs/step; 2000 pairs, max_steps 5); beta 0.1 (constant), reference model, ZeRO-3 ==")
    assert eval_banner(64, 1, 32, 1.0, None) == ("== eval: sampling 64 held-out prompts from policy and reference on "
                                                 "1 process (up to 32 new tokens, temperature 1), judge: none ==")


def test_settings_at_start_name_model_data_beta_reference_and_sharding(tmp_path):
    cfg = compose(["deepspeed=zero3_offload", "beta.value=0.2", "sft.enabled=false", f"output_root={tmp_path}"])
    lines = settings_lines(typed(cfg), tmp_path / "runs" / "x", processes=2, machines=1)
    assert lines[0] == "== run: stage all on 2 processes (1 machine), ZeRO-3 with CPU offload =="
    text = "\n".join(lines)
    assert "tiny-llama (float32, sdpa)" in text and "data    synthetic (generated), judge sentiment" in text
    assert "sft     off (DPO starts from the base model)" in text
    assert "dpo     beta 0.2 (constant), reference precomputed, lr 1.0e-03" in text
    assert lines[-1] == f"  output  {tmp_path / 'runs' / 'x'}"


RESULTS = {
    "runtime_s": {"sft": 8.09, "dpo": 9.46, "eval": 0.41},
    "sft": {"path": "/o/sft/468ab076d718", "reused": False, "judge_reward": -0.328},
    "dpo": {"policy_path": "/o/runs/default/policy", "held_out": {"loss": 0.31617, "rewards/accuracies": 0.9492,
                                                                   "rewards/margins": 1.1294},
            "kl_to_reference": 36.465, "judge_reward": 17.984, "win_rate_vs_reference": 1.0, "judge": "sentiment",
            "judge_agreement": 1.0},
    "wandb": {"run_id": "616y5g4b", "dir": "/o/runs/default/wandb/offline-run-1", "mode": "offline"},
}


def test_summary_block_reads_results_json(tmp_path):
    (tmp_path / "eval_samples.jsonl").write_text("{}\n")
    lines = summary_lines(RESULTS, tmp_path)
    assert lines[0] == f"== summary: {tmp_path} =="
    assert "  judge reward      policy 17.984 vs reference (SFT) -0.328" in lines
    assert "  win rate          1.000 against the reference" in lines
    assert "  KL to reference   36.465 nats per sample" in lines
    assert "  held-out pairs    accuracy 0.949, margin 1.129, loss 0.3162" in lines
    assert "  wall time         sft 8.1 s, dpo 9.5 s, eval 0.4 s" in lines
    assert "  policy            /o/runs/default/policy" in lines
    assert f"  results.json      {tmp_path / 'results.json'}" in lines
    assert f"  eval samples      {tmp_path / 'eval_samples.jsonl'}" in lines
    assert any(line.startswith("  W&B               /o/runs/default/wandb/offline-run-1 (offline") for line in lines)


def test_summary_prints_null_and_missing_fields_as_na(tmp_path):
    """Real data has no judge; W&B off; a reused SFT model has no SFT time."""
    dpo = {**RESULTS["dpo"], "judge_reward": None, "win_rate_vs_reference": None, "judge": None,
           "judge_agreement": None}
    results = {**RESULTS, "dpo": dpo, "sft": {"path": "/o/sft/x", "reused": True, "judge_reward": None},
               "runtime_s": {"dpo": 9.46, "eval": 0.41}, "wandb": {"run_id": None, "dir": None, "mode": None}}
    lines = summary_lines(results, tmp_path)
    assert "  judge reward      policy n/a vs reference (SFT) n/a" in lines
    assert "  win rate          n/a against the reference" in lines
    assert "  wall time         sft reused, dpo 9.5 s, eval 0.4 s" in lines
    assert "  eval samples      n/a" in lines and "  W&B               n/a" in lines
    assert any("n/a" in line for line in summary_lines({}, tmp_path))  # stage=sft alone: no DPO fields at all


def emitted(emit, filtered: bool = True) -> list[str]:
    """Messages of the warnings `emit` raises under "always show", with the project's filters on top."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if filtered:
            filter_harmless_warnings()
        emit()
    return [str(w.message) for w in caught]


DEPRECATED = ("`torch.distributed.reduce_scatter_tensor` is deprecated. Please use "
              "`torch.distributed.reduce_scatter_single` instead.")


def pin_memory_without_accelerator():  # torch's own warning, raised for real on a machine without a GPU
    next(iter(torch.utils.data.DataLoader([1, 2], pin_memory=True)))


def deprecated_collective(module="torch.distributed.c10d_logger", message=DEPRECATED):
    # As DeepSpeed's ZeRO calls meet it: attributed to torch's c10d_logger wrapper (c10d_logger.py:83).
    warnings.warn_explicit(message, FutureWarning, "c10d_logger.py", 83, module=module)


def test_the_three_harmless_families_are_silent_and_every_other_warning_shows():
    if not torch.cuda.is_available():
        assert len(emitted(pin_memory_without_accelerator, filtered=False)) == 1
        assert emitted(pin_memory_without_accelerator) == []
    assert emitted(deprecated_collective) == []
    # Same module, other message; same message, other module; anything else: all still shown.
    assert emitted(lambda: deprecated_collective(message="`torch.distributed.foo` is deprecated.")) != []
    assert emitted(lambda: deprecated_collective(module="mypackage.mine")) != []
    assert emitted(lambda: warnings.warn("an unrelated warning", UserWarning)) == ["an unrelated warning"]


def test_the_parallel_mode_notice_is_dropped_and_other_records_pass():
    filter_harmless_warnings()
    logger, seen = logging.getLogger("transformers.training_args"), []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        logger.warning("torch.distributed process group is initialized, but parallel_mode != ParallelMode.DISTRIBUTED. "
                       "In order to use Torch DDP, launch your script with `python -m torch.distributed.launch")
        logger.warning("an unrelated notice")
    finally:
        logger.removeHandler(handler)
    assert seen == ["an unrelated notice"]


def test_an_inprocess_run_shows_banners_lines_and_summary_not_dicts(tmp_path, capfd):
    """The fast in-process run of tests/test_inprocess.py (~2 s), its console captured."""
    cfg, run_dir = compose([*TINY, f"output_root={tmp_path}"]), tmp_path / "runs" / "console"
    with process_state_restored():
        run(cfg, run_dir, "console")
        out = capfd.readouterr().out
        run(cfg, run_dir, "console")  # finished: says so and shows the summary again, trains nothing
        again = capfd.readouterr().out
    for expected in ("== run: stage all on 1 process (1 machine), no DeepSpeed ==",
                     "== sft: training 2 optimizer steps on 1 process",
                     "== dpo: training 2 optimizer steps on 1 process",
                     "== eval: sampling 4 held-out prompts", "sft step 1/2 loss ", "dpo step 2/2 loss ",
                     "dpo held-out at step 2/2: loss ", f"== summary: {run_dir} =="):
        assert expected in out, f"{expected!r} not in:\n{out[-3000:]}"
    assert "{'loss': '" not in out and "'train_runtime'" not in out
    assert again.startswith("finished: ") and f"== summary: {run_dir} ==" in again and "== sft:" not in again
