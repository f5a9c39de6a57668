"""The INT8 accuracy gate: fp32 vs INT8 top-1 on each task's held-out images, against the thresholds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from subtune_edge.runtime import OrtRunner

from ..inputs import fit_batch
from ..shapes import INPUT_NAME
from .images import TaskImages
from .options import CALIBRATION_BATCH, Int8Options


# -- the gate ---------------------------------------------------------------------------------------
def top1(path: Path, arrays: dict[str, np.ndarray], batch, threads) -> dict[str, np.ndarray]:
    """Per output: argmax of that output on that task's own images."""
    lo, hi = batch
    got: dict[str, list] = {name: [] for name in arrays}
    with OrtRunner(path, threads=threads) as runner:
        for name, array in arrays.items():
            n = len(array)
            for chunk in fit_batch(array, (lo, max(lo, min(hi, CALIBRATION_BATCH)))):
                got[name].append(np.asarray(runner.infer({INPUT_NAME: chunk})[name]).argmax(-1))
            got[name] = np.concatenate(got[name])[:n] if got[name] else np.zeros(0, np.int64)
    return got


def _fits(got: np.ndarray, n: int) -> np.ndarray:
    return got[:n]


def gate(fp32: dict[str, np.ndarray], int8: dict[str, np.ndarray], images: dict[str, TaskImages],
         opts: Int8Options) -> dict[str, dict]:
    """Per output: agreement, accuracies, whether it passes the thresholds and why not."""
    results = {}
    for name, imgs in images.items():
        n = len(imgs.held_out)
        a, b = _fits(fp32[name], n), _fits(int8[name], n)
        agreement = float((a == b).mean())
        acc32 = acc8 = None
        if imgs.targets is not None:
            acc32, acc8 = float((a == imgs.targets).mean()), float((b == imgs.targets).mean())
        reasons = []
        if agreement < opts.min_agreement:
            reasons.append(f"top-1 agreement {agreement:.1%} < {opts.min_agreement:.1%}")
        if acc32 is not None and acc32 - acc8 > opts.max_drop + 1e-12:
            reasons.append(f"accuracy {acc32:.1%} -> {acc8:.1%} drops more than {opts.max_drop * 100:g} point(s)")
        results[name] = {"agreement": round(agreement, 6),
                         "accuracy_fp32": None if acc32 is None else round(acc32, 6),
                         "accuracy_int8": None if acc8 is None else round(acc8, 6),
                         "samples": n, "passed": not reasons, "reason": "; ".join(reasons) or None}
    return results
