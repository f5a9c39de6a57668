"""Where training runs execute, and the log that makes a search resumable.

Profiles and greedy searches are many independent training runs. They hand them to an
:class:`Executor` as plain, picklable specs and get plain results back:

``LocalExecutor``
    runs in this process, one after another (and can report per-epoch progress).
``ProcessExecutor``
    one spawned process per device or worker (``cuda:0``, ``cuda:1``, … or several CPU workers);
    each process builds the backbone and the data once and reuses them for all its runs.

``RayExecutor`` (:mod:`subtune_edge.ray_executor`, the optional ``dist`` extra)
    one Ray task per run on a Ray cluster (or a local Ray instance).

Another executor only has to implement :meth:`Executor.map` (and :meth:`Executor.close` if it
holds resources); :func:`make_executor` builds one from the CLI's ``--executor`` / ``--workers``.

:class:`RunLog` records every finished run in a JSON file, rewritten atomically after each run,
so an interrupted search started again with the same log skips what is already done.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from .errors import SubtuneError
from .io import atomic_write_bytes

# fn(item, device) -> result; must be a module-level function (picklable) for process executors.
RunFn = Callable[[Any, str], Any]

LOG_FORMAT = "subtune-edge.runs"
LOG_VERSION = 1


class Executor:
    """Runs ``fn(item, device)`` for every item; yields results as runs finish (not in input order)."""

    devices: list[str]

    def map(self, fn: RunFn, items: Iterable[Any]) -> Iterator[Any]:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{type(self).__name__}({', '.join(self.devices)})"

    def close(self) -> None:
        """Release what the executor holds (a Ray instance it started); nothing by default."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalExecutor(Executor):
    """In this process, one run after another, on one device."""

    def __init__(self, device: str = "auto"):
        self.devices = [device]

    def map(self, fn: RunFn, items: Iterable[Any]) -> Iterator[Any]:
        for item in items:
            yield fn(item, self.devices[0])


_WORKER_DEVICE = "auto"


def _init_worker(queue, threads: int | None) -> None:
    global _WORKER_DEVICE
    _WORKER_DEVICE = queue.get()
    import torch

    if threads:
        torch.set_num_threads(threads)
    if _WORKER_DEVICE.startswith("cuda"):
        torch.cuda.set_device(torch.device(_WORKER_DEVICE))


def _call(fn: RunFn, item: Any) -> Any:
    return fn(item, _WORKER_DEVICE)


class ProcessExecutor(Executor):
    """One spawned worker process per entry of ``devices``; a device may be listed more than once.

    Default: every visible CUDA device once, or ``workers`` CPU workers that share the cores.
    Work is handed out one run at a time, so fast workers take more runs.
    """

    def __init__(self, devices: list[str] | None = None, workers: int | None = None,
                 threads_per_worker: int | None = None):
        if devices is None:
            import torch

            n_cuda = torch.cuda.device_count()
            devices = [f"cuda:{i}" for i in range(n_cuda)] if n_cuda else ["cpu"] * max(1, workers or 2)
        if not devices:
            raise SubtuneError("a process executor needs at least one device")
        self.devices = list(devices)
        cpu_workers = sum(1 for d in self.devices if d == "cpu")
        self.threads = threads_per_worker or (max(1, (os.cpu_count() or 1) // cpu_workers) if cpu_workers else None)

    def map(self, fn: RunFn, items: Iterable[Any]) -> Iterator[Any]:
        items = list(items)
        if not items:
            return
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        for d in self.devices:
            queue.put(d)
        pool = ProcessPoolExecutor(max_workers=len(self.devices), mp_context=ctx, initializer=_init_worker,
                                   initargs=(queue, self.threads))
        try:
            pending: set[Future] = {pool.submit(_call, fn, item) for item in items}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


EXECUTOR_KINDS = "local|process|ray[:ADDRESS]"


def make_executor(workers: int | None = 1, device: str = "auto", devices: list[str] | None = None,
                  kind: str | None = None) -> Executor:
    """An executor for ``kind``:

    ``None`` (default): in this process when ``workers`` <= 1 and no device list, otherwise one
    process per worker / device; ``local``: in this process; ``process``: ``workers`` processes (on
    CUDA spread over the GPUs); ``ray`` / ``ray:ADDRESS``: a Ray cluster (see
    :class:`~subtune_edge.ray_executor.RayExecutor`; ``workers`` caps the runs in flight).
    """
    kind = (kind or "").strip()
    if kind.startswith("ray"):
        from .ray_executor import RayExecutor, parse_address

        address = parse_address(kind)
        return RayExecutor(address, max_concurrent=workers if workers and workers > 0 else None)
    if kind not in ("", "local", "process"):
        raise SubtuneError(f"unknown executor '{kind}'; use {EXECUTOR_KINDS}")
    workers = workers or 1
    if kind == "local":
        if devices or workers > 1:
            raise SubtuneError("the local executor runs one run at a time in this process; drop --workers or "
                               "use --executor process")
        return LocalExecutor(device)
    if devices:
        return ProcessExecutor(devices)
    if workers <= 1 and kind != "process":
        return LocalExecutor(device)
    if device.startswith("cuda") or (kind == "process" and device == "auto"):
        import torch

        n = torch.cuda.device_count()
        if n or device.startswith("cuda"):
            return ProcessExecutor([f"cuda:{i % max(n, 1)}" for i in range(workers)])
    return ProcessExecutor(["cpu"] * workers)


# -- the run log -----------------------------------------------------------------------------------
class RunLog:
    """Every finished run of a profile or a search, by key, in one JSON file.

    ``context`` holds what all runs of the log share (backbone, data, training config); a log
    written for another context is refused rather than silently mixed. ``path=None`` keeps the log in
    memory only.
    """

    def __init__(self, path: str | os.PathLike | None, context: dict | None = None):
        self.path = Path(path) if path is not None else None
        self.context = _jsonable(context or {})
        self.runs: dict[str, dict] = {}
        self.extra: dict[str, Any] = {}
        if self.path is not None and self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SubtuneError(f"run log {self.path} is unreadable ({exc}); delete it or pass another --log") from exc
        if data.get("format") != LOG_FORMAT:
            raise SubtuneError(f"{self.path} is not a subtune-edge run log; pass another --log")
        if self.context and data.get("context") and data["context"] != self.context:
            diff = _first_difference(data["context"], self.context)
            raise SubtuneError(f"run log {self.path} was written for other settings ({diff}); pass another "
                               "--log, or delete it to start over")
        self.runs = dict(data.get("runs") or {})
        self.extra = dict(data.get("extra") or {})

    def __contains__(self, key: str) -> bool:
        return key in self.runs

    def __len__(self) -> int:
        return len(self.runs)

    def get(self, key: str) -> dict | None:
        return self.runs.get(key)

    def record(self, key: str, result: dict) -> None:
        self.runs[key] = _jsonable(result)
        self.save()

    def set_extra(self, name: str, value: Any) -> None:
        self.extra[name] = _jsonable(value)
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        data = {"format": LOG_FORMAT, "version": LOG_VERSION, "context": self.context, "runs": self.runs,
                "extra": self.extra}
        atomic_write_bytes(self.path, json.dumps(data, indent=1).encode())


def run_all(executor: Executor, fn: RunFn, specs: list, log: RunLog, *, key: Callable[[Any], str],
            to_json: Callable[[Any], dict], on_result: Callable[[Any, dict, bool], None] | None = None
            ) -> dict[str, dict]:
    """Run every spec whose key is not in ``log`` (each result logged as it arrives); return all results
    by key. ``on_result(spec, result, reused)`` is told about each one, reused ones first."""
    by_key: dict[str, Any] = {}
    for s in specs:
        by_key.setdefault(key(s), s)
    todo = [s for k, s in by_key.items() if k not in log]
    for k, s in by_key.items():
        if k in log and on_result:
            on_result(s, log.get(k), True)
    for result in executor.map(fn, todo):
        data = to_json(result)
        log.record(data["key"], data)
        if on_result:
            on_result(by_key.get(data["key"]), data, False)
    return {k: log.get(k) for k in by_key}


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def _first_difference(a, b, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k)
    return f"{path}: {a!r} in the log, {b!r} now"
