"""The processes a run is spread over, as the training loop sees them.

The loop (:func:`~subtune_edge.train.loop.train`) is written once; what differs between one
process and a DDP group is asked of a :class:`World`: which device a process uses, how a global
batch is sliced per process, how the branch is wrapped so that gradients are averaged, and how
counts are summed over processes. :class:`World` itself is the trivial world of one process;
:class:`~subtune_edge.train.ddp.DDPWorld` is the group torchrun starts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..multitask import TaskModel
from .config import TrainConfig
from .loaders import split_batches


class World:
    """One process: every batch whole, sums are the local values, the branch as it is."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process reports and saves (rank 0)."""
        return self.rank == 0

    def device(self, device: str) -> str:
        """The device this process trains on, given the resolved one the user asked for."""
        return device

    def check(self, cfg: TrainConfig) -> None:
        """Refuse a resolved config this world cannot run (nothing for one process)."""

    def global_batches(self, n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
        """The batches of one epoch, whole (:func:`~subtune_edge.train.loaders.split_batches`)."""
        return split_batches(n, batch_size, generator)

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This process's part of a global batch: all of it."""
        return idx

    def all_sum(self, values: list[float], device: torch.device) -> list[float]:
        """``values`` summed over the processes: the values themselves."""
        return list(values)

    def wrap_branch(self, model: TaskModel) -> Callable[[torch.Tensor], torch.Tensor]:
        """What the optimiser step runs on prefix outputs: the task model's branch."""
        return model.forward_branch

    def saved_units(self, tuned: dict[str, nn.Module]) -> dict[str, nn.Module]:
        """The tuned units as the task file holds them."""
        return tuned

    def record(self) -> dict | None:
        """What the run's record says about the processes (nothing for one process)."""
        return None


SINGLE = World()
