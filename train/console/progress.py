"""One readable line of numbers per logging step, in place of the dict of strings transformers prints.

transformers 5's ProgressCallback.on_log (the tqdm bar the Trainer attaches; PrinterCallback with
disable_tqdm=True) writes `str(logs)` with every float turned into a string: a DPO step is one 700-character
line of 20 quoted keys (`{'loss': '0.6867', 'grad_norm': '0.6117', ...}`). ConsoleLogCallback takes its place:
the bar stays, and each logging step prints, above it, the few numbers that tell whether training works:

    dpo step 10/63 loss 0.6185 rewards/accuracies 0.919 margins 0.160 beta 0.1 lr 9.3e-04 grad_norm 0.502 tokens/s 28140

Every logged value still reaches W&B and results.json (`history`); only the console is shorter.
"""

from __future__ import annotations

import numbers

from tqdm.auto import tqdm
from transformers import PrinterCallback, ProgressCallback

# (logged key, label, format) per stage, in printed order.
LINE_KEYS = {
    "sft": (("loss", "loss", ".4f"), ("mean_token_accuracy", "token_accuracy", ".3f"), ("learning_rate", "lr", ".1e"),
            ("grad_norm", "grad_norm", ".3f"), ("throughput/tokens_per_s", "tokens/s", ".0f")),
    "dpo": (("loss", "loss", ".4f"), ("rewards/accuracies", "rewards/accuracies", ".3f"),
            ("rewards/margins", "margins", ".3f"), ("beta", "beta", ".3g"), ("learning_rate", "lr", ".1e"),
            ("grad_norm", "grad_norm", ".3f"), ("throughput/tokens_per_s", "tokens/s", ".0f")),
    "reward": (("loss", "loss", ".4f"), ("accuracy", "accuracy", ".3f"), ("margin", "margin", ".3f"),
               ("learning_rate", "lr", ".1e"), ("grad_norm", "grad_norm", ".3f")),
}
HELD_OUT_KEYS = (("loss", "loss", ".4f"), ("rewards/accuracies", "rewards/accuracies", ".3f"),
                 ("rewards/margins", "margins", ".3f"))


def numbers_line(logs: dict, keys: tuple, prefix: str = "") -> str:
    """`label value` for each key present with a number (a missing key or a string is left out)."""
    parts = []
    for key, label, spec in keys:
        value = logs.get(prefix + key)
        if isinstance(value, numbers.Number) and not isinstance(value, bool):
            parts.append(f"{label} {value:{spec}}")
    return " ".join(parts)


def format_log_line(stage: str, step: int, max_steps: int, logs: dict) -> str:
    """The console line for one `on_log` record: a training step, the held-out evaluation, or the end of training."""
    if "train_runtime" in logs:  # Trainer.train's closing record
        line = f"{stage} done: {step} steps in {logs['train_runtime']:.1f} s"
        if isinstance(logs.get("train_loss"), numbers.Number):
            line += f", mean train loss {logs['train_loss']:.4f}"
        return line
    if any(k.startswith("eval_") for k in logs):
        return f"{stage} held-out at step {step}/{max_steps}: {numbers_line(logs, HELD_OUT_KEYS, 'eval_')}".rstrip()
    line = f"{stage} step {step}/{max_steps} {numbers_line(logs, LINE_KEYS.get(stage, LINE_KEYS['sft']))}"
    if logs.get("bad_steps"):  # skipped NaN/inf steps (train/trainer/dpo.py): said only when there are some
        line += f" bad_steps {logs['bad_steps']}"
    return line.rstrip()


class ConsoleLogCallback(ProgressCallback):
    """transformers' progress bar (none with disable_tqdm=True), with our line instead of its dict."""

    def __init__(self, stage: str) -> None:
        super().__init__()
        self.stage = stage

    @classmethod
    def attach(cls, trainer, stage: str) -> "ConsoleLogCallback":
        """Takes the place of the Trainer's own ProgressCallback or PrinterCallback."""
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
        callback = cls(stage)
        trainer.add_callback(callback)
        return callback

    def on_train_begin(self, args, state, control, **kwargs):
        self.current_step = 0
        if not args.disable_tqdm:
            super().on_train_begin(args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            super().on_step_end(args, state, control, **kwargs)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if not args.disable_tqdm:
            super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            # tqdm.write prints above the bar instead of through it (stdout, as transformers' dict was).
            tqdm.write(format_log_line(self.stage, state.global_step, state.max_steps, logs))

    def on_train_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            super().on_train_end(args, state, control, **kwargs)
