"""PyTorch: eager, ``torch.compile`` and CUDA-graph replay, the ways a PyTorch deployment runs."""

from __future__ import annotations

import time

import torch

from .base import Runner
from .registry import RuntimeSpec, require


class TorchRunner(Runner):
    """A PyTorch module (returning a tensor or a tuple of tensors) on CPU or CUDA.

    On CUDA it can run under ``torch.compile`` or replay a captured CUDA graph, the two ways a
    PyTorch deployment removes Python and launch overhead.

    Args:
        module: the model; put in ``eval()`` and moved to ``device`` on activation.
        output_names: names for the module's outputs, in order.
        input_name: the name its single input is fed under.
        device: ``cpu`` or ``cuda[:N]``.
        compile: run under ``torch.compile``.
        cuda_graphs: capture once, then replay a CUDA graph (needs ``device='cuda'``).
        channels_last: NHWC memory format for module and input.
        dtype: cast module and input (e.g. ``torch.float16``); ``None`` keeps float32.
    """

    def __init__(self, module, output_names: list[str], input_name: str = "input", device: str = "cpu",
                 compile: bool = False, cuda_graphs: bool = False, channels_last: bool = False,
                 dtype=None):
        super().__init__()
        self.module, self._outputs, self._input = module, list(output_names), input_name
        self.device, self.compile, self.cuda_graphs = device, compile, cuda_graphs
        self.channels_last, self.dtype = channels_last, dtype
        suffix = "+compile" if compile else "+graphs" if cuda_graphs else ""
        self.name = f"torch-{'cuda' if device.startswith('cuda') else 'cpu'}{suffix}"
        if cuda_graphs and not device.startswith("cuda"):
            raise ValueError("CUDA graphs need device='cuda'")

    @property
    def input_names(self) -> list[str]:
        return [self._input]

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def _activate(self) -> None:
        if self.device.startswith("cuda"):
            require("torch-cuda")
        module = self.module.eval().to(self.device)
        if self.dtype is not None:
            module = module.to(self.dtype)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self._fn = torch.compile(module) if self.compile else module
        self._graph = None

    def _deactivate(self) -> None:
        self._fn = None
        self._graph = None

    @staticmethod
    def _as_tuple(out):
        return out if isinstance(out, (tuple, list)) else (out,)

    def _stage(self, feed):
        x = torch.from_numpy(feed[self._input]).to(self.device)
        if self.dtype is not None:
            x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.cuda_graphs:
            self._capture(x)
        return x

    def _capture(self, x) -> None:
        self._static_in = x.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):
                self._fn(self._static_in)
        torch.cuda.current_stream().wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph), torch.inference_mode():
            self._static_out = self._as_tuple(self._fn(self._static_in))

    def _run(self, staged) -> float:
        if self.device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            if self._graph is not None:
                self._graph.replay()
                self._last_t = self._static_out
            else:
                with torch.inference_mode():
                    self._last_t = self._as_tuple(self._fn(staged))
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        t0 = time.perf_counter()
        with torch.inference_mode():
            self._last_t = self._as_tuple(self._fn(staged))
        return (time.perf_counter() - t0) * 1e3

    def _fetch(self):
        return {n: t.detach().float().cpu().numpy() for n, t in zip(self._outputs, self._last_t)}

    def memory(self) -> dict:
        if not self.device.startswith("cuda"):
            return {}
        return {"gpu_max_allocated": int(torch.cuda.max_memory_allocated()),
                "gpu_max_reserved": int(torch.cuda.max_memory_reserved())}


def _cuda_probe() -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA GPU visible to PyTorch (torch.cuda.is_available() is False here)"
    return None


def _factory(device: str):
    def make(source, threads: int | None = None, graphs: bool = False, **options) -> TorchRunner:
        module, output_names = source
        if threads:
            torch.set_num_threads(threads)
        return TorchRunner(module, output_names, device=device, cuda_graphs=graphs, **options)

    return make


def _version() -> str:
    return torch.__version__


RUNTIMES = (
    RuntimeSpec("torch-cpu", "torch", "module", _factory("cpu"), install="torch (a dependency)", variants=("compile",),
                verifies=False, version=_version, description="PyTorch eager (+compile: torch.compile) on the CPU"),
    RuntimeSpec("torch-cuda", "torch", "module", _factory("cuda"), _cuda_probe, install="a CUDA build of torch",
                device="cuda", variants=("compile", "graphs"), verifies=False, version=_version,
                description="PyTorch on CUDA: eager, +compile (torch.compile) or +graphs (CUDA-graph replay)"),
)
