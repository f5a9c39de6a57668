"""ONNX Runtime: CPU, CUDA (inputs and outputs bound on the device) and the TensorRT provider."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import onnxruntime as ort

from .base import Runner
from .compare import TF32
from .registry import RuntimeSpec, require

DEVICES = {"cpu": "ort-cpu", "cuda": "ort-cuda", "trt": "ort-trt"}


def default_trt_cache() -> Path:
    """Where the TensorRT provider caches its engines: one folder per user (engines are keyed by model)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "subtune-edge" / "ort-trt-cache"


@dataclass(frozen=True)
class OrtSettings:
    """How an ONNX Runtime CPU session is set up, beyond its thread count: each field a documented ORT option.

    ``benchmarks/results/session-settings`` measures each against the defaults here, alone and side by side;
    a field's default is what won there (see its help). ``bench`` records them per row and the C++ runner
    uses the same.

    Attributes:
        optimization: ``all`` (``ORT_ENABLE_ALL``: layout transforms such as NCHWc included), ``extended``,
            ``basic``.
        spinning: intra-op worker threads spin after a run instead of sleeping (lower latency for a
            session alone; off, several sessions of one process do not steal each other's cores).
        mem_pattern: plan the memory of a fixed-shape run once and reuse the plan.
        cpu_arena: allocate from ORT's CPU arena (off: the system allocator).
        denormal_as_zero: flush denormal floats to zero (they are slow on x86).
        pin_threads: pin the intra-op worker threads to cores (``session.intra_op_thread_affinities``).
    """

    optimization: str = "all"
    spinning: bool = False
    mem_pattern: bool = True
    cpu_arena: bool = True
    denormal_as_zero: bool = False
    pin_threads: bool = False

    def to_json(self) -> dict:
        return asdict(self)


#: one session alone in the process (an app running an export): ORT's own default, spinning on, measured 1.7x
#: faster at batch 1 on the demo model (benchmarks/results/session-settings); the benchmark's side-by-side
#: sessions and the modular runner's trunk + branch sessions keep it off so as not to steal each other's cores
SINGLE_SESSION = OrtSettings(spinning=True)

LEVELS = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}


def ort_session(source: str | bytes, providers: list, threads: int | None = None, spinning: bool | None = None,
                settings: OrtSettings | None = None) -> ort.InferenceSession:
    """An ONNX Runtime session of ``source`` (a path, or a serialized model) with ``settings``.

    Args:
        source: the ``.onnx`` file's path, or the model's bytes.
        providers: the execution providers in the order ONNX Runtime should try them.
        threads: intra-op threads (inter-op: 1); ``None`` lets ONNX Runtime choose.
        spinning: override ``settings.spinning``.
        settings: the session options (default :class:`OrtSettings`).
    """
    settings = settings or OrtSettings()
    if spinning is not None:
        settings = replace(settings, spinning=spinning)
    so = ort.SessionOptions()
    so.graph_optimization_level = LEVELS[settings.optimization]
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if not settings.spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.enable_mem_pattern = settings.mem_pattern
    so.enable_cpu_mem_arena = settings.cpu_arena
    if settings.denormal_as_zero:
        so.add_session_config_entry("session.set_denormal_as_zero", "1")
    if settings.pin_threads and threads and threads > 1:
        # one entry per worker thread (the caller's thread is the first of the pool and is not pinned)
        cores = ";".join(str(i + 1) for i in range(1, threads))
        so.add_session_config_entry("session.intra_op_thread_affinities", cores)
    return ort.InferenceSession(source, so, providers=providers)


class OrtRunner(Runner):
    """ONNX Runtime on CPU, CUDA (IOBinding) or its TensorRT execution provider.

    Sessions are created with ``session.intra_op.allow_spinning=0`` so that several sessions in one
    process (the benchmark's separate copies) do not steal each other's cores while idle.

    Args:
        path: the ``.onnx`` file (external data beside it is found by ONNX Runtime).
        device: ``cpu``, ``cuda`` or ``trt`` (the TensorRT execution provider).
        threads: intra-op threads; ``None`` lets ONNX Runtime choose.
        trt_cache: where the TensorRT provider caches engines (default: the user's cache folder, never the
            export folder, whose manifest lists every file in it).
        trt_fp16: let the TensorRT provider use fp16 kernels.
        spinning: keep ONNX Runtime's idle spinning (overrides ``settings.spinning``).
        settings: the session options (:class:`OrtSettings`; default its defaults).
    """

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None,
                 trt_cache: str | Path | None = None, trt_fp16: bool = False, spinning: bool | None = None,
                 settings: OrtSettings | None = None):
        super().__init__()
        if device not in DEVICES:
            raise ValueError(f"unknown ONNX Runtime device '{device}'; choose from {', '.join(DEVICES)}")
        self.path, self.device, self.threads = Path(path), device, threads
        self.trt_cache, self.trt_fp16 = trt_cache, trt_fp16
        self.settings_ = replace(settings or OrtSettings(), **({} if spinning is None else {"spinning": spinning}))
        self.name = DEVICES[device]
        self.session = None
        self._io = None

    def providers(self) -> list:
        """The execution providers in the order ONNX Runtime should try them."""
        if self.device == "cpu":
            return ["CPUExecutionProvider"]
        cuda = ("CUDAExecutionProvider", {"device_id": 0})
        if self.device == "cuda":
            return [cuda, "CPUExecutionProvider"]
        trt_opts = {"trt_engine_cache_enable": True, "trt_fp16_enable": self.trt_fp16,
                    "trt_engine_cache_path": str(self.trt_cache or default_trt_cache())}
        return [("TensorrtExecutionProvider", trt_opts), cuda, "CPUExecutionProvider"]

    def _activate(self) -> None:
        require(self.name)
        self.session = ort_session(str(self.path), self.providers(), self.threads, settings=self.settings_)
        self._io = self.session.io_binding() if self.device != "cpu" else None

    def settings(self) -> dict:
        """The session's settings as results record them: providers, threads, optimisation, spinning."""
        providers = [p if isinstance(p, str) else p[0] for p in self.providers()]
        return {"onnxruntime": ort.__version__, "providers": providers, "intra_op_threads": self.threads,
                **self.settings_.to_json()}

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


def _factory(device: str):
    def make(source, threads: int | None = None, **options) -> OrtRunner:
        return OrtRunner(source, device, threads=threads, **options)

    return make


def _provider(provider: str, reason: str):
    def probe() -> str | None:
        return None if provider in ort.get_available_providers() else reason

    return probe


def _version() -> str:
    return ort.__version__


GPU_INSTALL = "pip install 'subtune-edge[gpu]'"

RUNTIMES = (
    RuntimeSpec("ort-cpu", "onnxruntime", "onnx", _factory("cpu"), install="onnxruntime (a dependency)",
                formats=("onnx", "ort"), verifies=False, memory_probe=True, modular=True, version=_version,
                alone={"settings": SINGLE_SESSION}, description="ONNX Runtime, CPU execution provider"),
    RuntimeSpec("ort-cuda", "onnxruntime", "onnx", _factory("cuda"),
                _provider("CUDAExecutionProvider", f"needs onnxruntime-gpu with a CUDA GPU: {GPU_INSTALL}"),
                install=GPU_INSTALL, device="cuda", formats=("onnx", "ort"), tolerance=TF32, memory_probe=True,
                modular=True, version=_version,
                description="ONNX Runtime, CUDA execution provider (inputs and outputs bound with IOBinding)"),
    RuntimeSpec("ort-trt", "onnxruntime", "onnx", _factory("trt"),
                _provider("TensorrtExecutionProvider", "needs onnxruntime-gpu built with TensorRT and the TensorRT "
                                                       "libraries on the library path"),
                install=GPU_INSTALL + " and TensorRT", device="cuda", tolerance=TF32, memory_probe=True,
                version=_version, description="ONNX Runtime, TensorRT execution provider (engine cache per user)"),
)
