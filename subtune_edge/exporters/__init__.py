"""Exporters: SubTuned tasks -> one verified ONNX graph (and TensorRT engine) + manifest.

The command users come for is ``subtune-edge export``; its library form is :func:`export_tasks`.
The building blocks are public so the benchmark harness can export subsets of tasks:

* :func:`export_onnx` — any module -> checked ONNX (dedup of shared weights, checker, external data)
* :func:`convert_fp16` — fp16 weights and compute, float32 I/O
* :mod:`subtune_edge.exporters.tensorrt` — TensorRT 10/11 version dispatch, optimization profile, engine build
* :func:`compare_outputs` — the runtime-agnostic comparator behind verification
* :func:`write_manifest` — the writing side of the manifest; reading and checking an export is
  :func:`subtune_edge.runtime.read_manifest` (re-exported here with :func:`check_files`)
"""

from subtune_edge.runtime.compare import FP16, FP32, TF32, OutputComparison, Tolerance, compare_outputs
from subtune_edge.runtime.manifest import FORMAT, FORMAT_VERSION, Manifest, check_files, read_manifest, require_intact

from .export import export_tasks
from .fp16 import convert_fp16
from .int8 import Int8Options
from .manifest import write_manifest
from .onnx_export import OnnxReport, check_onnx, duplicate_initializers, export_onnx, module_weight_bytes
from .options import BRANCHES, ExportOptions, TrtOptions
from .shapes import INPUT_NAME, check_batch, output_name, output_names, parse_batch
from .tensorrt import BuildRecipe, build_engine, build_recipe, profile_shapes, require_tensorrt

__all__ = [
    "BRANCHES", "ExportOptions", "Int8Options", "TrtOptions", "export_tasks",
    "convert_fp16",
    "FORMAT", "FORMAT_VERSION", "Manifest", "check_files", "read_manifest", "require_intact", "write_manifest",
    "OnnxReport", "check_onnx", "duplicate_initializers", "export_onnx", "module_weight_bytes",
    "INPUT_NAME", "check_batch", "output_name", "output_names", "parse_batch",
    "BuildRecipe", "build_engine", "build_recipe", "profile_shapes", "require_tensorrt",
    "FP16", "FP32", "TF32", "OutputComparison", "Tolerance", "compare_outputs",
]
