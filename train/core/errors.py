"""The project's own exceptions. The entry points print their one-line messages without a traceback."""

from __future__ import annotations


class ConfigError(ValueError):
    """A problem with the user's config, data or environment; the message is one line that says what to change."""


class TrainingAborted(RuntimeError):
    """Training cannot go on (e.g. the loss stays NaN); the message is one line that says what to do."""


class Preempted(Exception):
    """Stopped by a signal after saving a complete checkpoint; `requeued` if the scheduler has the job again."""

    def __init__(self, message: str, requeued: bool) -> None:
        super().__init__(message)
        self.requeued = requeued


class AwaitingLabels(Preempted):
    """An on-policy round with labeler=annotations exported its answers: people label them, then the same command
    continues the round. The message says exactly what to run."""

    def __init__(self, message: str) -> None:
        super().__init__(message, requeued=False)
