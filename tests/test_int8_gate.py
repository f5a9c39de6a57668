"""The INT8 gate's statistics on their own: a paired test of the accuracy drop, agreement beyond near-ties."""

from __future__ import annotations

import numpy as np
import pytest

from subtune_edge.exporters.int8 import Int8Options, judge, paired_drop


def test_newcombes_worked_example_is_reproduced():
    # Newcombe (1998), Stat Med 17:2635, table II: a=36, b=12, c=2, d=0 -> 95% interval 0.0569 .. 0.3404
    drop, lower, upper = paired_drop(36, 12, 2, 0, 0.975)
    assert drop == pytest.approx(0.2) and lower == pytest.approx(0.0569, abs=1e-4)
    assert upper == pytest.approx(0.3404, abs=1e-4)


def _task(n: int, accuracy: float, flips: int, margin: float, seed: int = 0):
    """fp32 logits of a low-margin 10-class task, INT8 logits that flip ``flips`` predictions both ways."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 10, n)
    right = rng.random(n) < accuracy
    pred = np.where(right, targets, (targets + 1 + rng.integers(0, 9, n)) % 10)
    fp32 = rng.normal(0, 0.05, (n, 10))
    fp32[np.arange(n), pred] += margin
    right = fp32.argmax(1) == targets  # noise moves some low-margin predictions: what counts is fp32's own
    int8 = fp32.copy()
    for i in range(flips):  # half of them right -> wrong, half wrong -> right: accuracy unchanged
        j = np.flatnonzero(right if i % 2 == 0 else ~right)[i // 2]
        new = targets[j] if not right[j] else (targets[j] + 1) % 10
        int8[j, new] = fp32[j].max() + 0.01
    return fp32, int8, targets


def test_a_low_margin_task_with_unchanged_accuracy_passes_although_agreement_is_low():
    fp32, int8, targets = _task(120, 0.8, 8, margin=0.08)
    agreement = float((fp32.argmax(1) == int8.argmax(1)).mean())
    assert agreement < 0.98  # the old gate (top-1 agreement >= 98%) refused this task
    result = judge(fp32, int8, targets, Int8Options())
    assert result["passed"] and result["drop"] == pytest.approx(0.0) and result["drop_lower"] < 0.01
    assert result["discordant"] == [4, 4] and result["p_value"] > 0.5


def test_a_real_loss_fails_with_confidence():
    fp32, int8, targets = _task(256, 0.9, 0, margin=1.0)
    rng = np.random.default_rng(1)
    broken = rng.normal(0, 1, int8.shape)  # what a constant-image calibration gives: noise
    result = judge(fp32, broken, targets, Int8Options())
    assert not result["passed"] and result["drop_lower"] > 0.5 and "confidence" in result["reason"]


def test_without_labels_near_ties_do_not_count_against_agreement():
    fp32, int8, _ = _task(200, 0.8, 0, margin=1.0)
    ties = np.arange(20)
    fp32[ties] = 0.0
    fp32[ties, 0], fp32[ties, 1] = 0.5, 0.499  # near-ties: INT8 may pick either
    int8[ties] = fp32[ties]
    int8[ties, 1] = 0.51
    result = judge(fp32, int8, None, Int8Options())
    assert result["agreement"] == pytest.approx(0.9) and result["decisive"] == 180
    assert result["agreement_decisive"] == 1.0 and result["passed"]
    int8[20:40] = np.roll(fp32[20:40], 1, axis=1)  # 20 decisive flips: 89% < 98% with confidence
    assert not judge(fp32, int8, None, Int8Options())["passed"]
