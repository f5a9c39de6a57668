"""fp32 ONNX -> calibrated INT8 QDQ ONNX (``model.int8.onnx``), with a per-task accuracy gate.

The quantizer is ONNX Runtime's own (``onnxruntime.quantization``): ``quant_pre_process`` (shape
inference + graph optimisation, as ORT recommends before QDQ), then ``quantize_static`` in QDQ
format with int8 symmetric activations (per tensor) and int8 symmetric per-channel weights. Why
this one: QDQ with zero points of 0 is what TensorRT's explicit quantization reads (TensorRT 10
with the INT8 flag, 11 strongly typed), the same file runs on ORT's CPU int8 kernels, and
onnxruntime is already a dependency (NVIDIA ModelOpt would add a heavy one). On x86 CPUs ORT's
fast kernels are U8S8: ``activations="uint8"`` writes asymmetric uint8 activations (ORT's own
recommendation there; not for TensorRT), measured in ``benchmarks/results/int8``.
Shape arithmetic (TF "same" padding computed in float) and the classifier heads stay fp32.

Calibration respects sharing: the trunk's tensors are calibrated on a seeded mix of every task's
images, each branch's tensors (the nodes that feed only that task's output) on its own task's
images. ORT's calibrators collect the ranges (one pass per task; for entropy / percentile one
more over the whole mix for the trunk); the merged ranges go to ``quantize_static`` through its
``calibration_cache_path``, so the quantizer itself is ORT's, untouched.

The gate runs ``model.onnx`` and the INT8 file on held-out images of each task (never the
calibration images): top-1 agreement and, where the task's labels are known, the accuracy of both.
A task past the thresholds fails the export in one line, or, with ``fallback``, has its branch
nodes excluded from quantization (``nodes_to_exclude``: fp32 branch) and is checked again.

The package: :mod:`.options` (:class:`Int8Options`, the quantizer's settings), :mod:`.images` (what each
task calibrates and gates on), :mod:`.calibration` (trunk / branch / shape nodes, the merged ranges),
:mod:`.quantization` (pre-processing, ``quantize_static``), :mod:`.gate` (the per-task accuracy gate),
:mod:`.pipeline` (the whole step with its fp32 fallback, fused and separate files).
"""

from .calibration import ArrayReader, branch_nodes, calibrate, head_nodes, shape_nodes
from .gate import gate, judge, logits, paired_drop
from .images import ImagePool, TaskImages, recorded_source, task_images
from .options import (
    ACTIVATIONS,
    METHODS,
    QUANTIZER,
    TARGETS,
    Int8Options,
    activations_for,
    check_options,
    quantizer,
    resolve_targets,
)
from .pipeline import Int8Export, Int8Result, export_all, export_int8, target_file
from .quantization import prepare, quantize

__all__ = [
    "ACTIVATIONS", "METHODS", "QUANTIZER", "TARGETS", "Int8Options", "activations_for", "check_options", "quantizer",
    "resolve_targets",
    "ImagePool", "TaskImages", "recorded_source", "task_images",
    "ArrayReader", "branch_nodes", "calibrate", "head_nodes", "shape_nodes",
    "prepare", "quantize",
    "gate", "judge", "logits", "paired_drop",
    "Int8Export", "Int8Result", "export_all", "export_int8", "target_file",
]
