"""Running exports: one runner per runtime, the manifest reader, preprocessing, ``load_export``.

This layer reads what ``exporters`` writes and never imports it (``exporters`` imports this):

* :mod:`.base` — the :class:`Runner` interface (Polygraphy's shape), :func:`missing_reason`, :func:`require`
* :mod:`.onnxruntime`, :mod:`.torch`, :mod:`.tensorrt`, :mod:`.openvino` — one runner per runtime;
  :func:`make_runner` by name
* :mod:`.manifest` — :class:`Manifest` and :func:`read_manifest`, the one validating reader of an export
* :mod:`.preprocess` — the manifest's preprocessing (image -> NCHW float32)
* :mod:`.exported` — :func:`load_export` / :class:`ExportedModel`
"""

from .base import BACKENDS, Runner, missing_reason, require
from .exported import ExportedModel, load_export
from .factory import make_runner
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
from .tensorrt import TrtRunner
from .torch import TorchRunner

__all__ = [
    "BACKENDS", "Runner", "missing_reason", "require", "make_runner", "OrtRunner", "TorchRunner", "TrtRunner",
    "OpenVinoRunner",
    "FORMAT", "FORMAT_VERSION", "MANIFEST", "BatchRange", "FileRecord", "InputSpec", "Manifest", "Preprocessing",
    "TaskOutput", "check_files", "is_export_dir", "read_manifest", "require_intact",
    "eval_transform", "load_image", "preprocess", "softmax",
    "ExportedModel", "load_export",
]
