"""One runner per runtime behind one small interface, in the shape of Polygraphy's runners.

Export verification, ``load_export`` and the benchmark harness all run models the same way::

    with OrtRunner("model.onnx", device="cpu") as runner:
        outputs = runner.infer({"input": batch})          # name -> numpy array

Timing code uses the staged path instead, so that host copies stay out of the measurement the
way a deployed app keeps them out (ORT IOBinding, device buffers for TensorRT and torch)::

    runner.stage(feed)            # inputs to where the runtime wants them, once
    ms = runner.run_staged()      # one inference on the staged inputs, completed; returns ms
    outputs = runner.fetch()      # outputs of the last run, as numpy

Sessions and engines are created lazily in ``activate()`` so that a runner is cheap to build and
memory can be measured around activation. A runtime that is not installed is reported by
:func:`missing_reason` with the install hint, never by an ImportError deep inside.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from .errors import RuntimeMissingError

BACKENDS = ("torch-cpu", "torch-cuda", "ort-cpu", "ort-cuda", "ort-trt", "trt")


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return ort.get_available_providers()


def missing_reason(backend: str) -> str | None:
    """Why ``backend`` cannot run here (with what to install), or None when it can."""
    if backend not in BACKENDS:
        return f"unknown backend '{backend}'; choose from {', '.join(BACKENDS)}"
    if backend in ("torch-cuda", "trt") and not _torch_cuda():
        return f"{backend} needs a CUDA GPU visible to PyTorch (torch.cuda.is_available() is False here)"
    if backend.startswith("ort") and not _ort_providers():
        return "onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu for CUDA / TensorRT)"
    if backend == "ort-cuda" and "CUDAExecutionProvider" not in _ort_providers():
        return "ort-cuda needs onnxruntime-gpu with a CUDA GPU: pip install 'subtune-edge[gpu]'"
    if backend == "ort-trt" and "TensorrtExecutionProvider" not in _ort_providers():
        return "ort-trt needs onnxruntime-gpu built with TensorRT and the TensorRT libraries on the library path"
    if backend == "trt":
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return ("trt needs TensorRT's Python bindings: pip install 'subtune-edge[trt]' on a desktop GPU, "
                    "or JetPack's python3-libnvinfer on Jetson")
    return None


def require(backend: str) -> None:
    reason = missing_reason(backend)
    if reason:
        raise RuntimeMissingError(reason)


class Runner(ABC):
    """Run one model on one runtime. Use as a context manager (activate / deactivate)."""

    name = "runner"

    def __init__(self) -> None:
        self.is_active = False
        self._staged: dict | None = None
        self._last: dict[str, np.ndarray] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def activate(self) -> Runner:
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False
            self._staged = None

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- inference -------------------------------------------------------------------------------
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.stage(feed)
        self.run_staged()
        return self.fetch()

    def stage(self, feed: dict[str, np.ndarray]) -> None:
        self.activate()
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise ValueError(f"{self.name}: no value for input(s) {missing}; inputs are {self.input_names}")
        self._staged = self._stage({n: np.ascontiguousarray(feed[n]) for n in self.input_names})

    def run_staged(self) -> float:
        """Run once on the staged inputs; returns milliseconds, measured after completion."""
        if self._staged is None:
            raise RuntimeError(f"{self.name}: call stage(feed) before run_staged()")
        return self._run(self._staged)

    def fetch(self) -> dict[str, np.ndarray]:
        return self._fetch()

    def memory(self) -> dict:
        """Runtime-reported memory (bytes) where the runtime reports it; empty otherwise."""
        return {}

    # -- what each runtime implements -------------------------------------------------------------
    @property
    @abstractmethod
    def input_names(self) -> list[str]: ...

    @property
    @abstractmethod
    def output_names(self) -> list[str]: ...

    @abstractmethod
    def _activate(self) -> None: ...

    def _deactivate(self) -> None:  # noqa: B027 - most runtimes free everything on garbage collection
        """Release the session/engine; optional."""

    @abstractmethod
    def _stage(self, feed: dict[str, np.ndarray]): ...

    @abstractmethod
    def _run(self, staged) -> float: ...

    @abstractmethod
    def _fetch(self) -> dict[str, np.ndarray]: ...


# ------------------------------------------------------------------------------------------------
class OrtRunner(Runner):
    """ONNX Runtime on CPU, CUDA (IOBinding) or its TensorRT execution provider.

    Sessions are created with ``session.intra_op.allow_spinning=0`` so that several sessions in one
    process (the benchmark's separate copies) do not steal each other's cores while idle.
    """

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None,
                 trt_cache: str | Path | None = None, trt_fp16: bool = False, spinning: bool = False):
        super().__init__()
        self.path, self.device, self.threads = Path(path), device, threads
        self.trt_cache, self.trt_fp16, self.spinning = trt_cache, trt_fp16, spinning
        self.name = {"cpu": "ort-cpu", "cuda": "ort-cuda", "trt": "ort-trt"}[device]
        self.session = None

    def providers(self) -> list:
        if self.device == "cpu":
            return ["CPUExecutionProvider"]
        cuda = ("CUDAExecutionProvider", {"device_id": 0})
        if self.device == "cuda":
            return [cuda, "CPUExecutionProvider"]
        trt_opts = {"trt_engine_cache_enable": True, "trt_fp16_enable": self.trt_fp16,
                    "trt_engine_cache_path": str(self.trt_cache or self.path.parent / "ort-trt-cache")}
        return [("TensorrtExecutionProvider", trt_opts), cuda, "CPUExecutionProvider"]

    def _activate(self) -> None:
        require(self.name)
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
        if not self.spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), so, providers=self.providers())
        self._io = self.session.io_binding() if self.device != "cpu" else None

    def _deactivate(self) -> None:
        self.session = None
        self._io = None

    @property
    def input_names(self) -> list[str]:
        self.activate()
        return [i.name for i in self.session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        self.activate()
        return [o.name for o in self.session.get_outputs()]

    def _stage(self, feed):
        if self._io is None:
            return feed
        import onnxruntime as ort

        self._io.clear_binding_inputs()
        self._io.clear_binding_outputs()
        values = {n: ort.OrtValue.ortvalue_from_numpy(a, "cuda", 0) for n, a in feed.items()}
        for n, v in values.items():
            self._io.bind_ortvalue_input(n, v)
        for n in self.output_names:
            self._io.bind_output(n, "cuda", 0)
        return values  # keep the device buffers alive

    def _run(self, staged) -> float:
        start = time.perf_counter()
        if self._io is None:
            self._last = dict(zip(self.output_names, self.session.run(None, staged)))
        else:
            self._io.synchronize_inputs()
            self.session.run_with_iobinding(self._io)
            self._io.synchronize_outputs()
        return (time.perf_counter() - start) * 1e3

    def _fetch(self):
        if self._io is not None:
            return dict(zip(self.output_names, self._io.copy_outputs_to_cpu()))
        return dict(self._last or {})


# ------------------------------------------------------------------------------------------------
class TorchRunner(Runner):
    """A PyTorch module (returning a tensor or a tuple of tensors) on CPU or CUDA.

    On CUDA it can run under ``torch.compile`` or replay a captured CUDA graph, the two ways a
    PyTorch deployment removes Python and launch overhead.
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
        import torch

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

    def _as_tuple(self, out):
        return out if isinstance(out, (tuple, list)) else (out,)

    def _stage(self, feed):
        import torch

        x = torch.from_numpy(feed[self._input]).to(self.device)
        if self.dtype is not None:
            x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.cuda_graphs:
            self._capture(x)
        return x

    def _capture(self, x) -> None:
        import torch

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
        import torch

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
        import torch

        return {"gpu_max_allocated": int(torch.cuda.max_memory_allocated()),
                "gpu_max_reserved": int(torch.cuda.max_memory_reserved())}


# ------------------------------------------------------------------------------------------------
class TrtRunner(Runner):
    """A serialized TensorRT engine (``model.plan``), run with ``execute_async_v3``.

    Written against the TensorRT 10/11 tensor API (``num_io_tensors``, ``set_input_shape``,
    ``set_tensor_address``); device buffers and the stream come from PyTorch so no extra CUDA
    binding is needed.
    """

    name = "trt"

    def __init__(self, plan: str | Path):
        super().__init__()
        self.plan = Path(plan)

    def _activate(self) -> None:
        require("trt")
        import tensorrt as trt
        import torch

        self._trt, self._torch = trt, torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if self.engine is None:
            raise RuntimeMissingError(f"TensorRT could not deserialize {self.plan}: built by another TensorRT "
                                      "version or for another GPU? rebuild it with `subtune-edge export --trt`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs_ = [n for n in names if n not in self._inputs]
        self._stream = torch.cuda.Stream()

    def _deactivate(self) -> None:
        self.context = None
        self.engine = None

    @property
    def input_names(self) -> list[str]:
        self.activate()
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        self.activate()
        return list(self._outputs_)

    def _torch_dtype(self, name: str):
        trt, torch = self._trt, self._torch
        return {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                trt.int64: torch.int64, trt.bfloat16: torch.bfloat16}[self.engine.get_tensor_dtype(name)]

    def _stage(self, feed):
        torch = self._torch
        buffers = {}
        for n in self._inputs:
            t = torch.from_numpy(feed[n]).to("cuda").to(self._torch_dtype(n)).contiguous()
            self.context.set_input_shape(n, tuple(t.shape))
            self.context.set_tensor_address(n, t.data_ptr())
            buffers[n] = t
        for n in self._outputs_:
            shape = tuple(self.context.get_tensor_shape(n))
            t = torch.empty(shape, dtype=self._torch_dtype(n), device="cuda")
            self.context.set_tensor_address(n, t.data_ptr())
            buffers[n] = t
        return buffers

    def _run(self, staged) -> float:
        torch = self._torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(self._stream)
        if not self.context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        end.record(self._stream)
        end.synchronize()
        return float(start.elapsed_time(end))

    def _fetch(self):
        return {n: self._staged[n].float().cpu().numpy() for n in self._outputs_}

    def memory(self) -> dict:
        if self.engine is None:
            return {}
        size = getattr(self.engine, "device_memory_size_v2", None) or self.engine.device_memory_size
        return {"trt_activation_bytes": int(size), "trt_plan_bytes": self.plan.stat().st_size}


def make_runner(backend: str, onnx_path: str | Path | None = None, *, module=None, output_names=None,
                plan: str | Path | None = None, threads: int | None = None, **options) -> Runner:
    """The runner for a backend name as used on the command line (see :data:`BACKENDS`)."""
    if backend == "ort-cpu":
        return OrtRunner(onnx_path, "cpu", threads=threads, **options)
    if backend == "ort-cuda":
        return OrtRunner(onnx_path, "cuda", threads=threads, **options)
    if backend == "ort-trt":
        return OrtRunner(onnx_path, "trt", threads=threads, **options)
    if backend == "trt":
        return TrtRunner(plan)
    if backend in ("torch-cpu", "torch-cuda"):
        if threads:
            import torch

            torch.set_num_threads(threads)
        return TorchRunner(module, output_names, device="cuda" if backend == "torch-cuda" else "cpu", **options)
    raise ValueError(missing_reason(backend))
