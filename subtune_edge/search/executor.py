"""Where training runs execute.

Profiles and greedy searches are many independent training runs. They hand them to an
:class:`Executor` as plain, picklable specs and get plain results back:

``LocalExecutor``
    runs in this process, one after another (and can report per-epoch progress).
``ProcessExecutor``
    one spawned process per device or worker (``cuda:0``, ``cuda:1``, … or several CPU workers);
    each process builds the backbone and the data once and reuses them for all its runs.

``RayExecutor`` (:mod:`subtune_edge.search.ray`, the optional ``dist`` extra)
    one Ray task per run on a Ray cluster (or a local Ray instance).

Another executor only has to implement :meth:`Executor.map` (and :meth:`Executor.close` if it
holds resources); :func:`~subtune_edge.search.factory.make_executor` builds one by name.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

import torch

from ..errors import SubtuneError

# fn(item, device) -> result; must be a module-level function (picklable) for process executors.
RunFn = Callable[[Any, str], Any]


class Executor:
    """Runs ``fn(item, device)`` for every item; yields results as runs finish (not in input order)."""

    devices: list[str]
    #: whether maps from several threads run at the same time (workers elsewhere), so that independent
    #: searches can share the workers; the local executor runs one run at a time in this thread
    concurrent: bool = False

    def map(self, fn: RunFn, items: Iterable[Any]) -> Iterator[Any]:
        """Run ``fn(item, device)`` for every item.

        Args:
            fn: a module-level function (process and Ray executors pickle it).
            items: the runs.

        Returns:
            An iterator over the results, in the order the runs finish.
        """
        raise NotImplementedError

    def describe(self) -> str:
        """One line saying where runs go, for logs and reports."""
        return f"{type(self).__name__}({', '.join(self.devices)})"

    def close(self) -> None:
        """Release what the executor holds (a Ray instance it started); nothing by default."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalExecutor(Executor):
    """In this process, one run after another, on one device (the only executor that can report epochs).

    Args:
        device: the device every run uses (``auto``: CUDA when there is one).
    """

    def __init__(self, device: str = "auto"):
        self.devices = [device]

    def map(self, fn: RunFn, items: Iterable[Any]) -> Iterator[Any]:
        for item in items:
            yield fn(item, self.devices[0])


_WORKER_DEVICE = "auto"


def _init_worker(queue, threads: int | None) -> None:
    global _WORKER_DEVICE
    _WORKER_DEVICE = queue.get()
    if threads:
        torch.set_num_threads(threads)
    if _WORKER_DEVICE.startswith("cuda"):
        torch.cuda.set_device(torch.device(_WORKER_DEVICE))


def _call(fn: RunFn, item: Any) -> Any:
    return fn(item, _WORKER_DEVICE)


class ProcessExecutor(Executor):
    """One spawned worker process per entry of ``devices``; a device may be listed more than once.

    Default: every visible CUDA device once, or ``workers`` CPU workers that share the cores.
    Work is handed out one run at a time, so fast workers take more runs. The workers live until
    :meth:`close` (use the executor as a context manager), so they build each backbone, data set and
    prefix once for all the rounds of a search.

    Args:
        devices: one worker per entry (``cuda:0``, ``cpu``, ...); default as above.
        workers: CPU workers when there is no CUDA device and no ``devices``.
        threads_per_worker: torch threads per CPU worker; default the cores shared out.

    Raises:
        SubtuneError: an empty device list.
    """

    def __init__(self, devices: list[str] | None = None, workers: int | None = None,
                 threads_per_worker: int | None = None):
        if devices is None:
            n_cuda = torch.cuda.device_count()
            devices = [f"cuda:{i}" for i in range(n_cuda)] if n_cuda else ["cpu"] * max(1, workers or 2)
        if not devices:
            raise SubtuneError("a process executor needs at least one device")
        self.devices = list(devices)
        cpu_workers = sum(1 for d in self.devices if d == "cpu")
        self.threads = threads_per_worker or (max(1, (os.cpu_count() or 1) // cpu_workers) if cpu_workers else None)
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    #: runs of several maps (from several threads) can be in flight at once
    concurrent = True

    def map(self, fn: RunFn, items: Iterable[Any]) -> Iterator[Any]:
        items = list(items)
        if not items:
            return
        pool = self._get_pool()
        pending: set[Future] = {pool.submit(_call, fn, item) for item in items}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        finally:
            for f in pending:  # a failed or abandoned map leaves no runs queued for the next one
                f.cancel()

    def _get_pool(self) -> ProcessPoolExecutor:
        # one pool for the executor's life: its workers keep their backbones, data and prefix caches
        # warm from one round of a search to the next
        with self._lock:
            return self._pool or self._start_pool()

    def _start_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            ctx = mp.get_context("spawn")
            queue = ctx.Queue()
            for d in self.devices:
                queue.put(d)
            self._pool = ProcessPoolExecutor(max_workers=len(self.devices), mp_context=ctx,
                                             initializer=_init_worker, initargs=(queue, self.threads))
        return self._pool

    def close(self) -> None:
        """Stop the worker processes (they are started again by the next :meth:`map`)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
