"""Summary statistics of latency samples, computed one way for every backend."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


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
