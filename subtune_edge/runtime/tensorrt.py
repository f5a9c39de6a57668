"""TensorRT, native: a serialized engine (``model.plan``) run with ``execute_async_v3``."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import RuntimeMissingError
from .base import ListedRunner
from .compare import TF32
from .registry import RuntimeSpec, needs_module, package_version, require

TRT_INSTALL = ("pip install 'subtune-edge[trt]' on a desktop GPU, or JetPack's python3-libnvinfer on Jetson")


class TrtRunner(ListedRunner):
    """A serialized TensorRT engine (``model.plan``), run with ``execute_async_v3``.

    Written against the TensorRT 10/11 tensor API (``num_io_tensors``, ``set_input_shape``,
    ``set_tensor_address``); device buffers and the stream come from PyTorch so no extra CUDA
    binding is needed.

    Args:
        plan: the serialized engine file.
    """

    name = "trt"
    _handles = ("context", "engine")

    def __init__(self, plan: str | Path):
        super().__init__()
        self.plan = Path(plan)
        self.engine = None
        self.context = None

    def _activate(self) -> None:
        require("trt")
        import tensorrt as trt  # optional: TensorRT's bindings install only with the 'trt' extra or JetPack

        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if self.engine is None:
            raise RuntimeMissingError(f"TensorRT could not deserialize {self.plan}: built by another TensorRT "
                                      "version or for another GPU? rebuild it by exporting again with trt")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        self._stream = torch.cuda.Stream()

    def _torch_dtype(self, name: str):
        trt = self._trt
        return {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                trt.int64: torch.int64, trt.bfloat16: torch.bfloat16}[self.engine.get_tensor_dtype(name)]

    def _stage(self, feed):
        buffers = {}
        for n in self._inputs:
            t = torch.from_numpy(feed[n]).to("cuda").to(self._torch_dtype(n)).contiguous()
            self.context.set_input_shape(n, tuple(t.shape))
            self.context.set_tensor_address(n, t.data_ptr())
            buffers[n] = t
        for n in self._outputs:
            shape = tuple(self.context.get_tensor_shape(n))
            t = torch.empty(shape, dtype=self._torch_dtype(n), device="cuda")
            self.context.set_tensor_address(n, t.data_ptr())
            buffers[n] = t
        return buffers

    def _run(self, staged) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(self._stream)
        if not self.context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        end.record(self._stream)
        end.synchronize()
        return float(start.elapsed_time(end))

    def _fetch(self):
        return {n: self._staged[n].float().cpu().numpy() for n in self._outputs}

    def memory(self) -> dict:
        if self.engine is None:
            return {}
        size = getattr(self.engine, "device_memory_size_v2", None) or self.engine.device_memory_size
        return {"trt_activation_bytes": int(size), "trt_plan_bytes": self.plan.stat().st_size}


def _probe() -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA GPU visible to PyTorch (torch.cuda.is_available() is False here)"
    return needs_module("tensorrt", TRT_INSTALL, "TensorRT's Python bindings")()


def _factory(source, threads: int | None = None, **options) -> TrtRunner:
    return TrtRunner(source)


RUNTIMES = (
    RuntimeSpec("trt", "tensorrt", "plan", _factory, _probe, install=TRT_INSTALL, device="cuda", formats=("plan",),
                tolerance=TF32, verifies=False, version=package_version("tensorrt"),
                description="TensorRT, native: the serialized engine model.plan"),
)
