"""Running exports: one runner per runtime, the manifest reader, preprocessing, ``load_export``.

This layer reads what ``exporters`` writes and never imports it (``exporters`` imports this):

* :mod:`.base` — the :class:`Runner` interface (Polygraphy's shape)
* :mod:`.registry` — the runtimes as registered plug-ins (:class:`RuntimeSpec`, :func:`register_runtime`),
  :func:`make_runner` and :func:`missing_reason` by name
* :mod:`.onnxruntime`, :mod:`.torch`, :mod:`.tensorrt`, :mod:`.openvino` — one runner and its specs per runtime
* :mod:`.compare` — the runtime-agnostic output comparator and its tolerances
* :mod:`.manifest` — :class:`Manifest` and :func:`read_manifest`, the one validating reader of an export
* :mod:`.preprocess` — the manifest's preprocessing (image -> NCHW float32)
* :mod:`.exported` — :func:`load_export` / :class:`ExportedModel`
"""

from .base import ListedRunner, Runner
from .compare import FP16, FP32, TF32, OutputComparison, Tolerance, compare_outputs
from .exported import ExportedModel, load_export
from .manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    BatchRange,
    FileRecord,
    InputSpec,
    Manifest,
    Preprocessing,
    TaskOutput,
    check_files,
    is_export_dir,
    read_manifest,
    require_intact,
)
from .onnxruntime import OrtRunner
from .openvino import OpenVinoRunner
from .preprocess import eval_transform, load_image, preprocess, softmax
from .registry import (
    RuntimeSpec,
    get_runtime,
    make_runner,
    missing_reason,
    needs_module,
    package_version,
    parse_backend,
    register_runtime,
    require,
    runtime_names,
    runtimes,
    unregister_runtime,
)
from .tensorrt import TrtRunner
from .torch import TorchRunner

__all__ = [
    "ListedRunner", "Runner", "OrtRunner", "TorchRunner", "TrtRunner", "OpenVinoRunner",
    "RuntimeSpec", "get_runtime", "make_runner", "missing_reason", "needs_module", "package_version", "parse_backend",
    "register_runtime", "require", "runtime_names", "runtimes", "unregister_runtime",
    "FP16", "FP32", "TF32", "OutputComparison", "Tolerance", "compare_outputs",
    "FORMAT", "FORMAT_VERSION", "MANIFEST", "BatchRange", "FileRecord", "InputSpec", "Manifest", "Preprocessing",
    "TaskOutput", "check_files", "is_export_dir", "read_manifest", "require_intact",
    "eval_transform", "load_image", "preprocess", "softmax",
    "ExportedModel", "load_export",
]
