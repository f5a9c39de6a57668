"""Training runs on a Ray cluster: the executor for searches that outgrow one machine.

Every run of a profile or a greedy search is independent, so :class:`RayExecutor` sends each one
to the cluster as a Ray task (one GPU per run where the cluster has GPUs, else ``cpus_per_run``
CPUs) and yields results as they finish (``ray.wait``); :func:`~subtune_edge.search.runlog.run_all`
writes each into the run log as it arrives. A worker that dies (a node lost, a process killed, out
of memory) is a system failure: Ray runs the task again, up to ``max_retries`` times. Exceptions
raised by the run itself (bad settings) are not retried unless ``retry_exceptions`` says so. The
log is indexed by run key, so a run reported twice is stored once, and a search started again
with the same log skips every run already in it.

Each worker builds the backbone and reads the data itself (cached per worker process, like the
process executor), so the data must be readable on every node: a shared file system, an object
store mounted on each node, or the bundled digits.

Ray is an optional extra: ``pip install 'subtune-edge[dist]'``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from ..errors import RuntimeMissingError, SubtuneError
from .executor import Executor, RunFn

INSTALL_HINT = "the Ray executor needs Ray: pip install 'subtune-edge[dist]'"


def require_ray():
    """The ``ray`` module, or a :class:`RuntimeMissingError` with the install line."""
    try:
        import ray  # optional: the dist extra
    except ImportError as exc:
        raise RuntimeMissingError(INSTALL_HINT) from exc
    return ray


def _run_on_worker(fn: RunFn, item: Any, threads: int) -> Any:
    """Runs inside a Ray worker: on the GPU Ray assigned to the task, else on CPU threads."""
    gpus = []
    try:
        import ray  # optional: the dist extra

        gpus = ray.get_gpu_ids()
    except Exception:  # noqa: BLE001 - outside a worker (tests call this directly)
        pass
    if gpus and torch.cuda.is_available():
        device = "cuda:0"  # Ray sets CUDA_VISIBLE_DEVICES to the task's GPU
        torch.cuda.set_device(0)
    else:
        device = "cpu"
        if threads > 0 and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return fn(item, device)


class RayExecutor(Executor):
    """Each run a Ray task; results stream back as runs finish.

    A Ray that is already initialised in this process is used as it is.

    Args:
        address: ``None`` connects to ``RAY_ADDRESS`` when it is set, else starts a local Ray
            instance; ``"auto"`` joins the cluster this node belongs to; ``"ray://HOST:10001"`` goes
            through the Ray client.
        cpus_per_run: CPUs (torch threads) of a CPU run.
        gpus_per_run: default 1 when the cluster has GPUs, else 0; fractions (0.5: two runs per GPU)
            are allowed.
        max_concurrent: the most runs in flight (default: as many as the cluster's resources allow).
        max_retries: how often Ray re-runs a task whose worker died.
        retry_exceptions: also re-run tasks that raised.
        runtime_env: Ray's runtime environment for the workers.
        init_kwargs: more arguments for ``ray.init``.

    Raises:
        RuntimeMissingError: Ray is not installed.
        SubtuneError: the cluster cannot be reached, has no GPU for ``gpus_per_run``, or
            ``max_concurrent`` is below 1.
    """

    def __init__(self, address: str | None = None, *, cpus_per_run: float = 1, gpus_per_run: float | None = None,
                 max_concurrent: int | None = None, max_retries: int = 3, retry_exceptions: bool = False,
                 runtime_env: dict | None = None, init_kwargs: dict | None = None):
        ray = require_ray()
        if max_concurrent is not None and max_concurrent < 1:
            raise SubtuneError(f"{{param}} must be at least 1, got {max_concurrent}", param="max_concurrent")
        self._owns_ray = False
        if not ray.is_initialized():
            kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
            kwargs.update(init_kwargs or {})
            if runtime_env:
                kwargs["runtime_env"] = runtime_env
            try:
                ray.init(address=address, **kwargs)
            except ConnectionError as exc:
                raise SubtuneError(f"cannot reach the Ray cluster at {address or os.environ.get('RAY_ADDRESS')} "
                                   f"({exc}); start it with `ray start --head` or pass the address of a running "
                                   "cluster as {param}", param="address") from exc
            self._owns_ray = True
        resources = ray.cluster_resources()
        self.cluster_gpus = float(resources.get("GPU", 0))
        self.cluster_cpus = float(resources.get("CPU", 0))
        self.gpus_per_run = (1.0 if self.cluster_gpus else 0.0) if gpus_per_run is None else float(gpus_per_run)
        if self.gpus_per_run and not self.cluster_gpus:
            raise SubtuneError(f"{self.gpus_per_run:g} GPU(s) per run asked for, but the Ray cluster has no GPU")
        # a GPU run still needs a CPU slot for its Python process; keep it small so GPUs, not CPUs, limit runs
        self.cpus_per_run = float(cpus_per_run) if not self.gpus_per_run else min(float(cpus_per_run), 1.0)
        self.max_concurrent = max_concurrent
        self.max_retries = max_retries
        self.retry_exceptions = retry_exceptions
        slots = int(self.cluster_gpus / self.gpus_per_run) if self.gpus_per_run else \
            int(self.cluster_cpus / max(self.cpus_per_run, 1e-9))
        self.slots = max(1, min(slots, max_concurrent or slots))
        self.devices = ["cuda"] * self.slots if self.gpus_per_run else ["cpu"] * self.slots

    def describe(self) -> str:
        what = f"{self.gpus_per_run:g} GPU" if self.gpus_per_run else f"{self.cpus_per_run:g} CPU"
        return (f"RayExecutor({self.slots} runs at a time, {what} each; cluster {self.cluster_cpus:g} CPU, "
                f"{self.cluster_gpus:g} GPU)")

    def map(self, fn: RunFn, items: Iterable[Any]) -> Iterator[Any]:
        ray = require_ray()
        items = list(items)
        if not items:
            return
        task = ray.remote(_run_on_worker).options(
            num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_retries=self.max_retries,
            retry_exceptions=self.retry_exceptions)
        threads = max(1, int(self.cpus_per_run))
        fn_ref = ray.put(fn)
        queue = list(reversed(items))
        limit = self.max_concurrent or len(items)
        pending: list = []
        try:
            while queue or pending:
                while queue and len(pending) < limit:
                    pending.append(task.remote(fn_ref, queue.pop(), threads))
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    yield ray.get(ref)
        finally:
            for ref in pending:  # the consumer stopped early (an error, Ctrl-C): do not leave runs behind
                ray.cancel(ref, force=True)

    def close(self) -> None:
        """Shut down the Ray instance this executor started (a cluster it joined keeps running)."""
        if self._owns_ray:
            ray = require_ray()
            if ray.is_initialized():
                ray.shutdown()
            self._owns_ray = False


def parse_address(spec: str) -> str | None:
    """'ray' -> None (RAY_ADDRESS or a local instance); 'ray:auto' -> 'auto'; 'ray:HOST:PORT' -> 'HOST:PORT'."""
    if spec == "ray":
        return None
    if not spec.startswith("ray:") or not spec[4:]:
        raise SubtuneError(f"'{spec}' is not a Ray executor; use ray, ray:auto, ray:HOST:PORT or ray:ray://HOST:10001")
    return spec[4:]
