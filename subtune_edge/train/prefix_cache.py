"""The prefix cache: frozen-prefix outputs of deterministic inputs, computed once.

Without augmentation the frozen prefix before the first tuned unit maps each image to the same
output every epoch, so it is computed once and an epoch costs only the branch. The validation split
is always deterministic, so its prefix is cached whenever the cache is on.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import torch

from ..backbone import Backbone
from ..data import ImageSet, TaskData
from .config import TrainConfig
from .loaders import make_loader
from .step import TrainStep


class PrefixCache:
    """Frozen-prefix outputs of deterministic inputs, least recently used first out.

    A key names everything the outputs depend on: the frozen weights (fingerprint), the branch
    point, the images, the transform, the device and the precision. Runs in one process (a
    profile, a greedy search) share it, so runs that branch at the same unit compute the prefix
    once between them.

    Args:
        max_bytes: the most the cache holds; older entries go first (the newest always stays).
    """

    def __init__(self, max_bytes: int = 2 << 30):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    @property
    def bytes(self) -> int:
        """Bytes the cached tensors take."""
        return sum(h.numel() * h.element_size() for h in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple) -> torch.Tensor | None:
        """The outputs stored under ``key``, or ``None``."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        return None

    def put(self, key: tuple, value: torch.Tensor) -> None:
        """Store ``value``, evicting the least recently used entries over ``max_bytes``."""
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > 1 and self.bytes > self.max_bytes:
            self._items.popitem(last=False)

    def clear(self) -> None:
        """Forget everything."""
        self._items.clear()


PREFIX_CACHE = PrefixCache()


def compute_prefix(step: TrainStep, dataset: ImageSet, cfg: TrainConfig) -> torch.Tensor:
    """Prefix outputs of every sample of ``dataset``, in order, on the training device."""
    return torch.cat([step.prefix(x) for x, _ in make_loader(dataset, 2 * cfg.batch_size, cfg)])


def _prefix_bytes(step: TrainStep, dataset: ImageSet) -> int:
    x, _ = dataset[0]
    h = step.prefix(x.unsqueeze(0))
    return h.numel() * h.element_size() * len(dataset)


def cached_prefix(step: TrainStep, dataset: ImageSet, cfg: TrainConfig, backbone: Backbone, data: TaskData,
                  cache: PrefixCache) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, str]:
    """The prefix outputs and targets of ``dataset`` from ``cache`` (computed if missing and small
    enough).

    Returns:
        ((outputs, targets) or ``None``, why: reused / computed / too large).
    """
    common = (backbone.fingerprint, json.dumps(backbone.spec.to_json(), sort_keys=True), step.model.start,
              json.dumps(data.data_config, sort_keys=True, default=str), cfg.device, str(step.dtype),
              bool(cfg.channels_last))
    targets = torch.as_tensor(dataset.targets, device=step.device)
    limit = min(cfg.cache_max_bytes, cache.max_bytes)
    base = dataset.base
    if base is not None:
        key = (*common, base.key)
        h = cache.get(key)
        reason = "reused"
        # the whole set serves every split, fold and sample size cut from it with one computation;
        # worth it unless the split is a small part of it (cfg.cache_whole_set)
        if h is None and len(base) <= cfg.cache_whole_set * len(dataset):
            whole = base.with_transform(dataset.transform)
            if _prefix_bytes(step, whole) <= limit:
                h, reason = compute_prefix(step, whole, cfg), f"computed for all {len(base)} images"
                cache.put(key, h)
        if h is not None:
            return (h[torch.as_tensor(dataset.base_indices, device=h.device)], targets), reason
    key = (*common, dataset.key)
    h = cache.get(key)
    if h is not None:
        return (h, targets), "reused"
    need = _prefix_bytes(step, dataset)
    if need > limit:
        return None, f"too large ({need / 2**20:.0f} MiB > {limit / 2**20:.0f} MiB)"
    h = compute_prefix(step, dataset, cfg)
    cache.put(key, h)
    return (h, targets), "computed"
