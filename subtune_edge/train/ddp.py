"""One SubTuning run on several GPUs (or CPU processes): DistributedDataParallel over what trains.

A SubTuning run trains copies of a few units and a head; the frozen trunk never changes. So only
the trainable part is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`
(:class:`TrainableBranch`: the tuned unit copies and the head are its registered modules; the frozen
units are reached through the task model but are not registered, so DDP neither broadcasts nor
all-reduces them, and they stay in ``eval()``). Every process builds the same backbone from the same
weights and reads the data itself.

Each global batch is exactly the batch a one-process run takes (same seed, same shuffled order,
``batch_size`` is the global batch); process ``r`` of ``W`` trains on the ``r``-th contiguous
slice of it. The loss of a slice is its summed cross-entropy times ``W / global batch``, so the
gradient DDP averages is the gradient of the mean over the global batch: the same update as one
process, up to floating-point order. Validation is sharded and its counts all-reduced.
Two differences to know: BatchNorm layers inside tuned units normalise over each process's slice
(on CUDA they are converted to ``SyncBatchNorm`` by default, which restores one-process statistics;
``SyncBatchNorm`` does not run on CPU), and random augmentation draws differ per process.
A trailing global batch with fewer than 2 samples per process joins the batch before it.

The loop is :func:`~subtune_edge.train.loop.train` with a :class:`DDPWorld`; the torchrun entry
point is ``python -m subtune_edge.distributed``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import SubtuneError
from ..multitask import TaskModel
from .config import TrainConfig
from .loaders import split_batches
from .world import World


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "gloo"

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that reports and saves)."""
        return self.rank == 0


def init_from_env(backend: str | None = None) -> DistContext:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    Args:
        backend: ``nccl`` or ``gloo``; default nccl with CUDA, gloo otherwise.

    Raises:
        SubtuneError: not started by torchrun (no RANK / WORLD_SIZE).
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise SubtuneError("no process group to join (RANK / WORLD_SIZE unset): launch with `torchrun "
                           "--nproc_per_node=N -m subtune_edge.distributed ...`")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, backend)


class TrainableBranch(nn.Module):
    """The trainable part of a :class:`TaskModel` as one module for DDP: tuned unit copies and the head
    are registered; the frozen units are used through the task model but not registered."""

    def __init__(self, model: TaskModel):
        super().__init__()
        self.trainable = nn.ModuleDict({n.replace(".", "__"): m for n, m in model.trainable_modules().items()})
        self._task = (model,)  # a tuple hides the task model (and its frozen units) from DDP

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self._task[0].forward_branch(h)


def global_batches(n: int, batch_size: int, generator: torch.Generator | None, world_size: int
                   ) -> list[torch.Tensor]:
    """The one-process batches (:func:`~subtune_edge.train.loaders.split_batches`); a trailing batch with
    fewer than 2 samples per process joins the one before."""
    batches = split_batches(n, batch_size, generator)
    if world_size > 1 and len(batches) > 1 and len(batches[-1]) < 2 * world_size:
        last = batches.pop()
        batches[-1] = torch.cat([batches[-1], last])
    return batches


def shard(idx: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This process's contiguous slice of a global batch."""
    return torch.tensor_split(idx, ctx.world_size)[ctx.rank]


class DDPWorld(World):
    """This process as one of a torchrun group.

    Args:
        ctx: the group (:func:`init_from_env`).
        sync_bn: SyncBatchNorm in the tuned units; default on with CUDA and 2+ processes (CUDA only).
    """

    def __init__(self, ctx: DistContext, sync_bn: bool | None = None):
        self.ctx = ctx
        self.rank, self.size = ctx.rank, ctx.world_size
        self.sync_bn_asked = sync_bn
        self.sync_bn = bool(sync_bn)
        self.global_batch: int | None = None

    def device(self, device: str) -> str:
        """On CUDA, the GPU of this process's LOCAL_RANK."""
        return f"cuda:{self.ctx.local_rank}" if device.startswith("cuda") else device

    def check(self, cfg: TrainConfig) -> None:
        """Refuse a global batch too small to split, and SyncBatchNorm off CUDA.

        Raises:
            SubtuneError: naming ``batch_size`` or ``sync_bn``.
        """
        if cfg.batch_size < 2 * self.size:
            raise SubtuneError(f"a global batch of {cfg.batch_size} leaves fewer than 2 samples per process on "
                               f"{self.size} processes; raise {{param}}", param="batch_size")
        cuda = cfg.device.startswith("cuda")
        self.sync_bn = (cuda and self.size > 1) if self.sync_bn_asked is None else self.sync_bn_asked
        if self.sync_bn and not cuda:
            raise SubtuneError("SyncBatchNorm runs on CUDA only; drop {param} on CPU", param="sync_bn")
        self.global_batch = cfg.batch_size

    def global_batches(self, n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
        """The one-process batches; a trailing batch too small to split joins the one before."""
        return global_batches(n, batch_size, generator, self.size)

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This process's contiguous slice of a global batch."""
        return shard(idx, self.ctx)

    def all_sum(self, values: list[float], device: torch.device) -> list[float]:
        """``values`` summed over the group (one all-reduce)."""
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        if self.size > 1:
            dist.all_reduce(t)
        return t.tolist()

    def wrap_branch(self, model: TaskModel) -> Callable[[torch.Tensor], torch.Tensor]:
        """The trainable part under DDP (its BatchNorms as SyncBatchNorm when asked)."""
        branch = TrainableBranch(model)
        if self.sync_bn:
            # BatchNorm children of the tuned units are replaced in place (same parameters)
            nn.SyncBatchNorm.convert_sync_batchnorm(branch)
        device = next(model.head.parameters()).device
        return nn.parallel.DistributedDataParallel(
            branch, device_ids=[device.index or 0] if device.type == "cuda" else None, broadcast_buffers=True)

    def saved_units(self, tuned: dict[str, nn.Module]) -> dict[str, nn.Module]:
        """The task file holds plain BatchNorm modules."""
        return {u: revert_sync_bn(m) for u, m in tuned.items()} if self.sync_bn else tuned

    def record(self) -> dict:
        """World size, backend, SyncBatchNorm and the global batch, for the run's record."""
        return {"world_size": self.size, "backend": self.ctx.backend, "sync_bn": self.sync_bn,
                "global_batch": self.global_batch}


def revert_sync_bn(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every SyncBatchNorm back to BatchNorm2d (same state)."""
    module = copy.deepcopy(module)
    for parent in module.modules():
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.SyncBatchNorm):
                bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats).to(next(child.parameters(), child.running_mean).device)
                bn.load_state_dict(child.state_dict())
                bn.train(child.training)
                setattr(parent, child_name, bn)
    return module
