"""Stopping rules: end a run before its last iteration once more labels would buy little.

Each rule reads only the finished rounds' metrics (metrics.jsonl), so a resumed run stops
where the uninterrupted one did. A run that stops has still trained and scored every round
it reports; the reason goes into status.json.
"""

from __future__ import annotations

from typing import NamedTuple

from jal.errors import JalError


class StopConfig(NamedTuple):
    target_accuracy: float | None = None  # stop once test accuracy reaches this
    max_labels: int | None = None  # stop once a model has trained on this many labels
    plateau: int | None = None  # stop after this many rounds without a new best test accuracy...
    plateau_delta: float = 0.0  # ...better than the previous best by more than this


def check(config: StopConfig) -> None:
    if config.target_accuracy is not None and not 0 < config.target_accuracy <= 1:
        raise JalError(f"`target_accuracy` {config.target_accuracy} must be in (0, 1]")
    if config.max_labels is not None and config.max_labels < 1:
        raise JalError(f"`max_labels` {config.max_labels} must be at least 1")
    if config.plateau is not None and config.plateau < 1:
        raise JalError(f"`plateau` {config.plateau} must be at least 1 round")
    if not config.plateau_delta >= 0:
        raise JalError(f"`plateau_delta` {config.plateau_delta} must be >= 0")


def reason(config: StopConfig, history: list[dict]) -> str | None:
    """Why the run should stop after the rounds of `history` (metrics.jsonl records), or None."""
    if not history:
        return None
    last = history[-1]
    if config.target_accuracy is not None and last["test_accuracy"] >= config.target_accuracy:
        return f"test accuracy {last['test_accuracy']:.4f} reached the target {config.target_accuracy}"
    if config.max_labels is not None and last["num_labeled"] >= config.max_labels:
        return f"{last['num_labeled']} labels reached the budget of {config.max_labels}"
    if config.plateau is not None and len(history) > config.plateau:
        before = max(m["test_accuracy"] for m in history[: -config.plateau])
        recent = max(m["test_accuracy"] for m in history[-config.plateau :])
        if recent <= before + config.plateau_delta:
            return (
                f"test accuracy has not risen above its best of {before:.4f} by more than {config.plateau_delta} "
                f"in {config.plateau} rounds"
            )
    return None
