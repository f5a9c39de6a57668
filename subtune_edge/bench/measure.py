"""Each side's memory accounting and the pruning of a fused graph to k tasks' outputs (the alternated
timing loop itself is :func:`subtune_edge.runtime.timing.measure_pair`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx.utils

from subtune_edge.runtime import Runner

from .memory import nvml_used_bytes, rss_bytes


def prune_outputs(model_path: Path, outputs: list[str], out_path: Path) -> Path:
    """Write the sub-graph of ``model_path`` that computes only ``outputs``.

    Dead trunk units and the other tasks' branches drop out, so a k-task subset is measured at
    exactly the depth and width a k-task export would have.

    Args:
        model_path: the fused ``model.onnx``.
        outputs: the output names to keep (task names).
        out_path: where to write the pruned graph.

    Returns:
        ``out_path``.
    """
    onnx.utils.extract_model(str(model_path), str(out_path), ["input"], outputs, check_model=True)
    return out_path


@dataclass
class _Side:
    """One side of a comparison: its runners, and the memory they took when activated."""

    runners: list[Runner]
    weight_bytes: int
    rss_growth: int | None = None  # measured in a fresh process where possible (memprobe)
    rss_source: str = "in-process"
    gpu_bytes: int | None = None


def _activate(side: _Side, feed: dict[str, np.ndarray]) -> None:
    before_rss, before_gpu = rss_bytes(), nvml_used_bytes()
    for r in side.runners:
        r.stage(feed)
        r.run_staged()  # arenas and lazy allocations happen on the first run
    if side.rss_growth is None:
        side.rss_growth = max(0, rss_bytes() - before_rss)
    after_gpu = nvml_used_bytes()
    if before_gpu is not None and after_gpu is not None:
        side.gpu_bytes = after_gpu - before_gpu
    reported = [r.memory() for r in side.runners]
    if any(reported):
        side.gpu_bytes = side.gpu_bytes or sum(m.get("gpu_max_allocated", 0) + m.get("trt_activation_bytes", 0)
                                               for m in reported) or None

