"""Seeded, stratified splits: validation hold-outs, small-data samples and k-fold folds.

Every split is a pure function of the targets and a seed, so a worker process (or another
machine) that rebuilds a dataset from its :class:`~subtune_edge.data.DataSpec` gets exactly the
same indices, and greedy-selection runs compare units on identical data.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError


def stratified_split(targets: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out about ``fraction`` of every class, at least one image where a class has two.

    Args:
        targets: class index per sample.
        fraction: the share held out, strictly between 0 and 1.
        seed: the shuffle's seed.

    Returns:
        (kept, held) sorted index arrays; together they cover every index once.

    Raises:
        DataError: ``fraction`` outside (0, 1).
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation fraction must be between 0 and 1, got {fraction}; set {{param}} to e.g. 0.2",
                        param="val_fraction")
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        rng.shuffle(idx)
        n = int(round(len(idx) * fraction))
        n = min(max(n, 1 if len(idx) >= 2 else 0), len(idx) - 1)
        held.extend(idx[:n])
        keep.extend(idx[n:])
    return np.sort(np.array(keep, dtype=np.int64)), np.sort(np.array(held, dtype=np.int64))


def stratified_sample(targets: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices with the classes in proportion, every class at least once where ``n`` allows.

    Args:
        targets: class index per sample.
        n: how many to take; at least ``len(targets)`` takes everything.
        seed: the draw's seed.

    Returns:
        Sorted indices.
    """
    if n >= len(targets):
        return np.arange(len(targets))
    classes, counts = np.unique(targets, return_counts=True)
    share = counts / counts.sum() * n
    take = np.maximum(np.floor(share).astype(int), 1 if n >= len(classes) else 0)
    take = np.minimum(take, counts)
    # hand out what rounding left over, largest remainders first
    for i in np.argsort(-(share - np.floor(share))):
        if take.sum() >= n:
            break
        if take[i] < counts[i]:
            take[i] += 1
    while take.sum() > n:
        take[np.argmax(take)] -= 1
    rng = np.random.default_rng(seed)
    chosen = []
    for c, k in zip(classes, take):
        idx = np.flatnonzero(targets == c)
        chosen.extend(rng.permutation(idx)[:k])
    return np.sort(np.array(chosen, dtype=np.int64))


def stratified_folds(targets: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """``k`` disjoint folds covering every index, each class dealt round-robin after a seeded shuffle.

    Args:
        targets: class index per sample.
        k: the number of folds, at least 2.
        seed: the shuffle's seed.

    Returns:
        ``k`` sorted index arrays.

    Raises:
        DataError: ``k`` below 2.
    """
    if k < 2:
        raise DataError(f"k-fold validation needs at least 2 folds, got {k}; set {{param}} to 2 or more "
                        "(0 turns k-fold off)", param="folds")
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    offset = 0
    for c in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == c))
        for j, i in enumerate(idx):
            folds[(offset + j) % k].append(int(i))
        offset += len(idx)
    return [np.sort(np.array(f, dtype=np.int64)) for f in folds]
