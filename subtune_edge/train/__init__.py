"""Training runs: one loop for one process and for a DDP group, and runs as plain data.

``config``  :class:`TrainConfig`, the device and mixed precision
``step``    the optimiser step (:class:`TrainStep`)
``prefix_cache``  frozen-prefix outputs computed once
``loaders`` loaders and batch orders
``world``   the processes a run spans (:class:`World`: one process)
``ddp``     a torchrun group (:class:`DDPWorld`)
``loop``    :func:`train`, the one loop, and evaluation
``record``  :class:`RunRecord`, :class:`TrainResult`
``runs``    :class:`RunSpec` / :class:`RunResult` for executors, :func:`execute_run`
"""

from __future__ import annotations

from .config import TrainConfig, amp_dtype, device_name, resolve_device, run_mode
from .ddp import DDPWorld, DistContext, init_from_env
from .loaders import split_batches
from .loop import evaluate, train
from .prefix_cache import PREFIX_CACHE, PrefixCache
from .record import RunRecord, TrainResult
from .runs import RunResult, RunSpec, execute_run, get_backbone, get_data
from .step import TrainStep, cosine_with_warmup
from .world import World

__all__ = [
    "PREFIX_CACHE", "DDPWorld", "DistContext", "PrefixCache", "RunRecord", "RunResult", "RunSpec", "TrainConfig",
    "TrainResult", "TrainStep", "World", "amp_dtype", "cosine_with_warmup", "device_name", "evaluate",
    "execute_run", "get_backbone", "get_data", "init_from_env", "resolve_device", "run_mode", "split_batches",
    "train",
]
