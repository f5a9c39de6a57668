"""The INT8 gate: does quantization lose a task's accuracy, with confidence, on its held-out images?

Top-1 agreement of INT8 with fp32 is the wrong measure for a classifier with many low-margin
predictions: a sample that was a coin toss in fp32 flips in INT8 without any harm to accuracy. So,
where the held-out images are labelled, the gate tests the accuracy itself, paired: per image, fp32
right / INT8 wrong (``b``) against fp32 wrong / INT8 right (``c``). The drop is ``(b - c) / n``; a
task fails only when the lower end of a one-sided confidence interval for the drop (Newcombe's
method 10 for paired proportions, Wilson score intervals: Newcombe 1998, *Stat Med* 17:2635) is above
``max_drop``, i.e. when the data say with that confidence that INT8 loses more than ``max_drop``.
The exact McNemar p-value (drop > 0) is reported beside it.

Tasks whose held-out images have no labels are gated on agreement, counted only on the samples
whose fp32 top-2 margin is not a near-tie (:data:`NEAR_TIE` of the output scale): a task fails when
the upper end of the Wilson interval for that agreement is below ``min_agreement``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy.stats import binomtest, norm

from subtune_edge.runtime import OrtRunner

from ..inputs import fit_batch
from ..shapes import INPUT_NAME
from .images import TaskImages
from .options import CALIBRATION_BATCH, Int8Options

#: a sample whose fp32 top-2 logits are closer than this share of the output scale is a near-tie
NEAR_TIE = 0.02
PAIRED_TEST = "paired accuracy drop: one-sided Newcombe (method 10) interval, exact McNemar p-value"
AGREEMENT_TEST = "top-1 agreement on samples that are not near-ties: one-sided Wilson interval"


def logits(path: Path, arrays: dict[str, np.ndarray], batch, threads) -> dict[str, np.ndarray]:
    """Per output: that output's logits on that task's own images."""
    lo, hi = batch
    got: dict[str, np.ndarray] = {}
    with OrtRunner(path, threads=threads) as runner:
        for name, array in arrays.items():
            parts = [np.asarray(runner.infer({INPUT_NAME: chunk})[name], dtype=np.float64)
                     for chunk in fit_batch(array, (lo, max(lo, min(hi, CALIBRATION_BATCH))))]
            got[name] = np.concatenate(parts)[:len(array)] if parts else np.zeros((0, 1))
    return got


def wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    """The Wilson score interval of a proportion (``z``: the normal quantile of the one-sided level)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_drop(a: int, b: int, c: int, d: int, confidence: float) -> tuple[float, float, float]:
    """The accuracy drop fp32 - INT8 with a one-sided interval at ``confidence`` at each end.

    Args:
        a: images both got right.
        b: fp32 right, INT8 wrong.
        c: fp32 wrong, INT8 right.
        d: images both got wrong.
        confidence: the one-sided level (0.95: the drop exceeds the lower end with 95% confidence).

    Returns:
        ``(drop, lower, upper)`` by Newcombe's method 10 (Wilson intervals of both accuracies, their
        correlation through the paired table).
    """
    n = a + b + c + d
    if n == 0:
        return 0.0, -1.0, 1.0
    z = float(norm.ppf(confidence))
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n, z)
    l2, u2 = wilson(a + c, n, z)
    den = math.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    phi = (a * d - b * c) / den if den else 0.0
    drop = p1 - p2
    lower = drop - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    upper = drop + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return drop, lower, upper


def decisive(reference: np.ndarray, tie: float = NEAR_TIE) -> np.ndarray:
    """The samples whose top-2 margin is at least ``tie`` of the output scale (not near-ties)."""
    if reference.ndim != 2 or reference.shape[1] < 2:
        return np.ones(len(reference), dtype=bool)
    top2 = np.sort(reference, axis=1)[:, -2:]
    scale = float(np.abs(reference).max()) or 1.0
    return (top2[:, 1] - top2[:, 0]) > tie * scale


def judge(fp32: np.ndarray, int8: np.ndarray, targets: np.ndarray | None, opts: Int8Options) -> dict:
    """One task's gate figures and verdict from its fp32 and INT8 logits on its held-out images."""
    a8, a32 = int8.argmax(-1), fp32.argmax(-1)
    n = len(a32)
    agree = a8 == a32
    sure = decisive(fp32)
    out: dict = {"agreement": round(float(agree.mean()) if n else 1.0, 6), "samples": n,
                 "decisive": int(sure.sum()),
                 "agreement_decisive": round(float(agree[sure].mean()) if sure.any() else 1.0, 6),
                 "confidence": opts.confidence, "accuracy_fp32": None, "accuracy_int8": None}
    reasons = []
    if targets is not None:
        r32, r8 = a32 == targets, a8 == targets
        a, b = int((r32 & r8).sum()), int((r32 & ~r8).sum())
        c, d = int((~r32 & r8).sum()), int((~r32 & ~r8).sum())
        drop, lower, upper = paired_drop(a, b, c, d, opts.confidence)
        p_value = float(binomtest(b, b + c, 0.5, alternative="greater").pvalue) if b + c else 1.0
        out.update(test=PAIRED_TEST, accuracy_fp32=round(float(r32.mean()), 6),
                   accuracy_int8=round(float(r8.mean()), 6), drop=round(drop, 6), drop_lower=round(lower, 6),
                   drop_upper=round(upper, 6), discordant=[b, c], p_value=round(p_value, 6))
        if lower > opts.max_drop + 1e-12:
            reasons.append(f"accuracy {r32.mean():.1%} -> {r8.mean():.1%}: the drop is above "
                           f"{opts.max_drop * 100:g} point(s) with {opts.confidence:.0%} confidence (at least "
                           f"{lower * 100:.1f} points)")
    else:
        z = float(norm.ppf(opts.confidence))
        _, upper = wilson(int(agree[sure].sum()), int(sure.sum()), z)
        out.update(test=AGREEMENT_TEST, agreement_upper=round(upper, 6))
        if upper < opts.min_agreement:
            reasons.append(f"top-1 agreement {out['agreement_decisive']:.1%} on {int(sure.sum())} samples that are "
                           f"not near-ties is below {opts.min_agreement:.1%} with {opts.confidence:.0%} confidence")
    out.update(passed=not reasons, reason="; ".join(reasons) or None)
    return out


def gate(fp32: dict[str, np.ndarray], int8: dict[str, np.ndarray], images: dict[str, TaskImages],
         opts: Int8Options) -> dict[str, dict]:
    """Per output: its gate figures and whether it passes (see the module docstring)."""
    return {name: judge(fp32[name], int8[name], imgs.targets, opts) for name, imgs in images.items()}
