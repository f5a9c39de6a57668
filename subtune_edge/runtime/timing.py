"""Timing runners the one way every measurement here is taken: rounds alternated, a budget, one summary.

:func:`measure_pair` alternates a round of one side and a round of the other until a
:class:`Budget` is spent, so that drift (clock boosts, thermal throttling, other load) hits both
sides alike; :func:`summarize` turns the samples into median, tail percentiles and throughput. The
benchmark harness uses them for fused against separate copies, and export for plain against
grouped branches (``branches="auto"``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import SubtuneError
from .base import Runner


@dataclass
class Summary:
    """Latency statistics of one side of one measurement point, in milliseconds."""

    n: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    throughput_ips: float  # images per second at the median latency

    def to_json(self) -> dict:
        return asdict(self)


def summarize(samples_ms: list[float] | np.ndarray, batch: int = 1) -> Summary:
    """Median, tail percentiles (linear interpolation, numpy's default) and throughput."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no latency samples to summarize")
    median = float(np.median(a))
    return Summary(n=int(a.size), median_ms=median, p90_ms=float(np.percentile(a, 90)),
                   p99_ms=float(np.percentile(a, 99)), mean_ms=float(a.mean()), std_ms=float(a.std()),
                   min_ms=float(a.min()), max_ms=float(a.max()),
                   throughput_ips=batch * 1000.0 / median if median > 0 else float("inf"))


def added_per_task(medians: list[float]) -> list[float]:
    """L(k) - L(k-1) for k = 1..N, with L(0) = 0: what each extra task adds."""
    return [m - (medians[i - 1] if i else 0.0) for i, m in enumerate(medians)]


def least_worst_slowdown(medians: dict[int, dict[str, float]]) -> tuple[str, dict[str, float]]:
    """The variant to ship when one file serves several batch sizes: the least worst-case slowdown.

    At each timed batch every variant's median is divided by the fastest variant's there; a variant's
    worst slowdown is the largest of those ratios over the batches, and the least of those wins (ties
    go to the variant named first: pass the simpler one first). Deciding at one batch alone picked
    grouped branches for a 0-7% gain at batch 1 that were up to 1.84x slower at batch 8
    (``benchmarks/results/branches``).

    Args:
        medians: per batch, per variant, the median latency (ms); every batch has the same variants.

    Returns:
        ``(chosen variant, {variant: worst slowdown})``; the chosen one's is 1.0 when it is the fastest
        at every batch.

    Raises:
        ValueError: no batches, or batches that timed different variants.
    """
    points = list(medians.values())
    if not points or any(set(p) != set(points[0]) or not p for p in points):
        raise ValueError("least_worst_slowdown needs every batch to time the same, non-empty variants")
    worst = {v: max(p[v] / min(p.values()) for p in points) for v in points[0]}
    return min(worst, key=worst.__getitem__), worst


def positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass
class Budget:
    """When one measurement point stops: after at least ``min_runs`` rounds *and* ``seconds``, or at
    ``max_runs`` rounds, whichever comes first.

    A time budget alone would give a slow backend a handful of samples and a fast one thousands;
    the round bounds keep tail percentiles meaningful on both.
    """

    warmup: int = field(default=3, metadata={"help": "untimed rounds first (arenas, autotuning, caches)"})
    min_runs: int = field(default=10, metadata={"help": "timed rounds at least, whatever the time budget"})
    max_runs: int = field(default=200, metadata={"help": "timed rounds at most"})
    seconds: float = field(default=10.0, metadata={"help": "time to keep measuring once min_runs are done"})

    def check(self) -> Budget:
        """Refuse a budget that cannot produce a measurement.

        Returns:
            The budget itself.

        Raises:
            SubtuneError: a negative warm-up or time, fewer than one timed round, or max below min.
        """
        if not (isinstance(self.warmup, int) and self.warmup >= 0):
            raise SubtuneError(f"budget warmup must be an integer >= 0, got {self.warmup!r}", param="budget")
        if not (positive_int(self.min_runs) and positive_int(self.max_runs) and self.min_runs <= self.max_runs):
            raise SubtuneError(f"budget needs integers 1 <= min_runs <= max_runs, got {self.min_runs!r} and "
                               f"{self.max_runs!r}", param="budget")
        if not (isinstance(self.seconds, (int, float)) and self.seconds >= 0):
            raise SubtuneError(f"budget seconds must be a number >= 0, got {self.seconds!r}", param="seconds")
        return self


def _time_round(runners: list[Runner]) -> float:
    return sum(r.run_staged() for r in runners)


def measure_rounds(sides: dict[str, list[Runner]], budget: Budget) -> dict[str, list[float]]:
    """Round-robin over several sides (each a list of staged runners) until the budget is spent.

    The generalisation of :func:`measure_pair`: every round runs each side once, in the same order, so
    drift hits all of them alike.

    Returns:
        Per side, one latency (ms) per round.
    """
    for _ in range(budget.warmup):
        for runners in sides.values():
            _time_round(runners)
    samples: dict[str, list[float]] = {name: [] for name in sides}
    start = time.perf_counter()
    rounds = 0
    while rounds < budget.max_runs:
        for name, runners in sides.items():
            samples[name].append(_time_round(runners))
        rounds += 1
        if rounds >= budget.min_runs and time.perf_counter() - start >= budget.seconds:
            break
    return samples


def measure_files(runners: dict[str, Runner], feed: dict[str, np.ndarray], budget: Budget) -> dict[str, list[float]]:
    """Stage one feed on each runner, time them round-robin (:func:`measure_rounds`), deactivate them.

    How a choice between files of the same graph (plain vs grouped branches) is timed: every side sees
    the same input, and every session is released even when a run fails.

    Args:
        runners: one runner per side, not yet staged.
        feed: the input arrays by name.
        budget: warm-up and stopping rule.

    Returns:
        Per side, one latency (ms) per round.
    """
    try:
        for r in runners.values():
            r.stage(feed)
        return measure_rounds({name: [r] for name, r in runners.items()}, budget)
    finally:
        for r in runners.values():
            r.deactivate()


def measure_pair(fused: list[Runner], separate: list[Runner], budget: Budget) -> tuple[list[float], list[float]]:
    """Alternate one fused round and one separate round until the budget is spent.

    Alternating, rather than measuring one side after the other, makes drift (clock boosts,
    thermal throttling, other load) hit both sides alike, so their ratio stays honest.

    Args:
        fused: the runners of the fused side (staged already); a round runs each once.
        separate: the runners of the separate side (staged already).
        budget: warm-up and stopping rule.

    Returns:
        ``(fused_ms, separate_ms)``: one latency per round and side, in milliseconds.
    """
    got = measure_rounds({"a": fused, "b": separate}, budget)
    return got["a"], got["b"]
