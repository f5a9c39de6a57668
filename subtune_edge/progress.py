"""One progress event for every long-running step of the library.

Training epochs, search runs, export steps and benchmark rounds all report through a callable
that takes an :class:`Event`; the CLI turns events into a progress bar, a Python user can log them
or ignore them. The library itself never prints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """What just happened in a long-running step.

    Attributes:
        stage: which step reports ("train", "search", "export", "bench", ...).
        message: a short human-readable line ("epoch 3/10", "verifying outputs").
        done: how many units of work are finished, when countable.
        total: how many there are in all, when known.
        data: the figures behind the message (loss, accuracy, a run's record), JSON types.
    """

    stage: str
    message: str = ""
    done: int | None = None
    total: int | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


Progress = Callable[[Event], None]
"""A progress callback: called with each :class:`Event`; its return value is ignored."""


def emit(progress: Progress | None, stage: str, message: str = "", done: int | None = None,
         total: int | None = None, **data: Any) -> None:
    """Send an event to ``progress`` when there is one (callers need not test for ``None``)."""
    if progress is not None:
        progress(Event(stage, message, done, total, data))
