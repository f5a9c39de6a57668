"""Loaders and batch orders: the same shuffled batches for one process and for every DDP rank."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from ..data import ImageSet
from .config import TrainConfig


def make_loader(dataset: ImageSet | torch.utils.data.Dataset, batch_size: int, cfg: TrainConfig,
                batch_sampler: torch.utils.data.Sampler | None = None,
                persistent: bool = False) -> torch.utils.data.DataLoader:
    """A loader with the config's workers (never more than there are batches) and pinned memory on CUDA."""
    workers = min(int(cfg.num_workers or 0), max(1, len(dataset) // max(1, batch_size)))
    kwargs = dict(num_workers=workers, pin_memory=cfg.device.startswith("cuda"),
                  persistent_workers=persistent and workers > 0)
    if workers:
        kwargs["prefetch_factor"] = 4
    if batch_sampler is not None:
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, **kwargs)


def split_batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    """Shuffled index batches; a trailing batch of one sample joins the one before (BatchNorm in train
    mode cannot normalise a single sample).

    Args:
        n: samples in the split.
        batch_size: samples per batch.
        generator: the shuffling order; ``None`` keeps the samples in order (to count batches).
    """
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        last = batches.pop()  # popped first: the batch it joins is then the last one
        batches[-1] = torch.cat([batches[-1], last])
    return batches


class EpochSampler(torch.utils.data.Sampler):
    """Each epoch's index batches from ``batches(generator)`` (one process's share of them)."""

    def __init__(self, batches: Callable[[torch.Generator | None], list[torch.Tensor]], generator: torch.Generator):
        self.batches, self.generator = batches, generator

    def __iter__(self) -> Iterator[list[int]]:
        return iter([b.tolist() for b in self.batches(self.generator)])

    def __len__(self) -> int:
        return len(self.batches(None))
