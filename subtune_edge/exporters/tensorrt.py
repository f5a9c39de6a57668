"""ONNX -> TensorRT engine (``model.plan``) with the TensorRT Python API, for TensorRT 10 and 11.

Two generations are in the field and they disagree on how precision is chosen:

* **TensorRT 10.x** (JetPack 6 on Jetson): networks are weakly typed by default; fp16 is allowed
  by the ``BuilderFlag.FP16`` builder flag on the fp32 ``model.onnx``.
* **TensorRT 11.x** (desktop): every network is strongly typed and the precision flags are gone;
  the precision comes from the ONNX itself, so an fp16 engine is built from ``model.fp16.onnx``.

:func:`build_recipe` makes that decision from the version string alone and
:func:`profile_shapes` turns the batch range into the optimization profile; both need no
TensorRT and are unit-tested. :func:`build_engine` does the build: ``OnnxParser.parse_from_file``
(so external data next to the ONNX is found), a workspace memory pool limit, one optimization
profile, and a timing cache file that is read before and written after every build so that
rebuilding on the same GPU skips the kernel timing.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from subtune_edge.errors import ExportError, RuntimeMissingError
from subtune_edge.io import atomic_write_bytes

from .shapes import check_batch

INSTALL_HINT = ("{param} needs TensorRT's Python bindings: on a desktop GPU `pip install 'subtune-edge[trt]'` "
                "(TensorRT 10/11 wheels), on Jetson flash JetPack 6 and use its python3-libnvinfer (TensorRT 10)")
DEFAULT_WORKSPACE = 1 << 30            # 1 GiB: enough for the tactics of vision backbones, fits a Jetson Orin Nano
MIN_MAJOR, MAX_TESTED_MAJOR = 10, 11


def require_tensorrt():
    """The ``tensorrt`` module, or a :class:`RuntimeMissingError` that says how to install it."""
    try:
        import tensorrt  # optional: TensorRT's bindings install only with the 'trt' extra or JetPack
    except ImportError as exc:
        raise RuntimeMissingError(INSTALL_HINT, param="trt") from exc
    return tensorrt


def tensorrt_version() -> str | None:
    try:
        import tensorrt  # optional: as in require_tensorrt
    except ImportError:
        return None
    return str(tensorrt.__version__)


def trt_major(version: str) -> int:
    m = re.match(r"\s*(\d+)\.", str(version) + ".")
    if not m:
        raise ExportError(f"cannot read the TensorRT version '{version}'")
    return int(m.group(1))


@dataclass(frozen=True)
class BuildRecipe:
    """How to build an engine of ``precision`` with TensorRT ``version``."""

    version: str
    major: int
    precision: str                 # "fp32", "fp16" or "int8"
    onnx_file: str                 # which file of the export the engine is built from
    strongly_typed: bool           # precision taken from the ONNX's types
    network_flags: tuple[str, ...]  # NetworkDefinitionCreationFlag members to set
    builder_flags: tuple[str, ...]  # BuilderFlag members to set

    def to_json(self) -> dict:
        return asdict(self)


def build_recipe(version: str, fp16: bool, int8: bool = False) -> BuildRecipe:
    """Version dispatch: which ONNX, which flags. Needs no TensorRT.

    With ``int8`` the engine is built from ``model.int8.onnx`` (explicit quantization: the QDQ
    nodes say what runs in int8). TensorRT 10 parses it weakly typed and needs ``BuilderFlag.INT8``
    for a QDQ network (plus ``FP16`` with ``fp16``, so that the layers left in float may use fp16);
    TensorRT 11 is strongly typed and takes every precision from the graph, with no flags.
    """
    major = trt_major(version)
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    if major < MIN_MAJOR:
        raise ExportError(f"TensorRT {version} is too old; subtune-edge builds with TensorRT 10 (JetPack 6) or 11: "
                          "upgrade JetPack or `pip install 'subtune-edge[trt]'`")
    if int8:
        if major == 10:
            return BuildRecipe(version, major, precision, "model.int8.onnx", False, (),
                               ("INT8", "FP16") if fp16 else ("INT8",))
        return BuildRecipe(version, major, precision, "model.int8.onnx", True, (), ())
    if major == 10:
        # weak typing: builder flags allow fp16 kernels on the fp32 graph (explicit batch is implied in 10)
        return BuildRecipe(version, major, precision, "model.onnx", False, (), ("FP16",) if fp16 else ())
    # 11 and later: strongly typed always (no creation flag needed), no precision flags exist
    return BuildRecipe(version, major, precision, "model.fp16.onnx" if fp16 else "model.onnx", True, (), ())


def profile_shapes(batch: tuple[int, ...], input_size: tuple[int, int], channels: int = 3
                   ) -> dict[str, tuple[int, int, int, int]]:
    """The optimization profile of the input: NCHW shapes at min, opt and max batch.

    ``opt`` is the batch TensorRT times its kernels for; it defaults to the minimum (edge apps run
    one frame at a time). Pass (min, opt, max) to tune for throughput instead.
    """
    lo, opt, hi = check_batch(tuple(batch))
    h, w = (int(v) for v in input_size)
    return {"min": (lo, channels, h, w), "opt": (opt, channels, h, w), "max": (hi, channels, h, w)}


def default_timing_cache() -> Path:
    """One timing cache per user; TensorRT checks that it matches the GPU and version."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "subtune-edge" / "tensorrt.timing-cache"


def _read_timing_cache(config, path: Path):
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # built by another TensorRT or for another GPU: start afresh (it is rewritten after the build)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return bool(data)


def _write_timing_cache(config, path: Path) -> None:
    atomic_write_bytes(path, bytes(memoryview(config.get_timing_cache().serialize())))


def engine_memory(trt, plan: bytes) -> dict:
    """Weight and activation (execution context) memory of a serialized engine, in bytes."""
    logger = trt.Logger(trt.Logger.ERROR)
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        return {"weights_bytes": len(plan), "weights_source": "plan size (engine could not be deserialized here)"}
    out = {}
    activation = getattr(engine, "device_memory_size_v2", None)
    out["activation_bytes"] = int(activation if activation is not None else engine.device_memory_size)
    stat = getattr(trt, "EngineStat", None)
    if stat is not None and hasattr(engine, "get_engine_stat"):      # TensorRT >= 10.8
        try:
            out["weights_bytes"] = int(engine.get_engine_stat(stat.TOTAL_WEIGHTS_SIZE))
            out["weights_source"] = "ICudaEngine.getEngineStat(kTOTAL_WEIGHTS_SIZE)"
            return out
        except Exception:  # an engine that cannot answer: fall back to the plan size
            pass
    out["weights_bytes"] = len(plan)
    out["weights_source"] = "plan size (this TensorRT has no EngineStat; weights dominate the plan)"
    return out


def build_engine(export_dir: str | Path, recipe: BuildRecipe, shapes: dict, *, plan_name: str = "model.plan",
                 input_name: str = "input", workspace: int = DEFAULT_WORKSPACE,
                 timing_cache: str | Path | None = None) -> dict:
    """Build ``export_dir/plan_name`` from ``export_dir/recipe.onnx_file``; returns the manifest record."""
    trt = require_tensorrt()
    export_dir = Path(export_dir)
    onnx_path = export_dir / recipe.onnx_file
    if not onnx_path.is_file():
        raise ExportError(f"{onnx_path.name} is missing; TensorRT {recipe.version} builds {recipe.precision} "
                          f"engines from it (export with fp16 for fp16 engines)")
    messages: list[str] = []

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.Severity.WARNING):  # ERROR and INTERNAL_ERROR are lower
                messages.append(str(msg))

    start = time.perf_counter()
    logger = _Logger()
    builder = trt.Builder(logger)
    flags = 0
    for name in recipe.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT {recipe.version} cannot parse {onnx_path.name}: "
                          f"{(errors or messages or ['no detail'])[0][:240]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    for name in recipe.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else default_timing_cache()
    cache_reused = _read_timing_cache(config, cache_path)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT {recipe.version} could not build an engine from {onnx_path.name}: "
                          f"{(messages or ['see the TensorRT log'])[-1][:240]}")
    _write_timing_cache(config, cache_path)
    plan_bytes = bytes(memoryview(plan))
    atomic_write_bytes(export_dir / plan_name, plan_bytes)
    return {"file": plan_name, **recipe.to_json(), "profile": {k: list(v) for k, v in shapes.items()},
            "workspace_bytes": int(workspace), "timing_cache": str(cache_path), "timing_cache_reused": cache_reused,
            "build_seconds": round(time.perf_counter() - start, 2), **engine_memory(trt, plan_bytes)}
