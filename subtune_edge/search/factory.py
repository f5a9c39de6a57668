"""An executor by name: the one module that knows every kind (so the kinds need not know each other)."""

from __future__ import annotations

import torch

from ..errors import SubtuneError
from .executor import Executor, LocalExecutor, ProcessExecutor
from .ray import RayExecutor, parse_address, require_ray

EXECUTOR_KINDS = "local|process|ray[:ADDRESS]"


def check_executor_kind(kind: str | None) -> str | None:
    """``kind`` stripped, after refusing one that is unknown or Ray where Ray is not installed.

    Raises:
        SubtuneError: an unknown kind (``param="kind"``); RuntimeMissingError without Ray.
    """
    if kind is None:
        return None
    kind = kind.strip()
    if kind.startswith("ray"):
        parse_address(kind)
        require_ray()
    elif kind not in ("", "local", "process"):
        raise SubtuneError(f"unknown executor '{kind}'; pass one of {EXECUTOR_KINDS} as {{param}}", param="kind")
    return kind


def make_executor(workers: int | None = 1, device: str = "auto", devices: list[str] | None = None,
                  kind: str | None = None) -> Executor:
    """An executor for ``kind``.

    Args:
        workers: parallel runs (process executor), or the cap on runs in flight (Ray).
        device: the device runs use; with CUDA, process workers spread over the GPUs.
        devices: one process per entry, whatever ``workers`` says.
        kind: ``None`` (default): in this process when ``workers`` <= 1 and no device list, otherwise
            one process per worker / device; ``local``: in this process; ``process``: ``workers``
            processes; ``ray`` / ``ray:ADDRESS``: a Ray cluster (see
            :class:`~subtune_edge.search.ray.RayExecutor`).

    Returns:
        The executor (a context manager: close it, or use ``with``).

    Raises:
        SubtuneError: an unknown kind, or several workers asked of the local executor.
    """
    kind = (kind or "").strip()
    if kind.startswith("ray"):
        address = parse_address(kind)
        return RayExecutor(address, max_concurrent=workers if workers and workers > 0 else None)
    if kind not in ("", "local", "process"):
        raise SubtuneError(f"unknown executor '{kind}'; pass one of {EXECUTOR_KINDS} as {{param}}", param="kind")
    workers = workers or 1
    if kind == "local":
        if devices or workers > 1:
            raise SubtuneError("the local executor runs one run at a time in this process; drop {param} or "
                               "use the process executor", param="workers")
        return LocalExecutor(device)
    if devices:
        return ProcessExecutor(devices)
    if workers <= 1 and kind != "process":
        return LocalExecutor(device)
    if device.startswith("cuda") or (kind == "process" and device == "auto"):
        n = torch.cuda.device_count()
        if n or device.startswith("cuda"):
            return ProcessExecutor([f"cuda:{i % max(n, 1)}" for i in range(workers)])
    return ProcessExecutor(["cpu"] * workers)
