"""INT8 export options and constants: :class:`Int8Options`, their checks, the quantizer's settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from onnxruntime.quantization import CalibrationMethod, QuantType

from subtune_edge.docs import documented
from subtune_edge.errors import ExportError

STAGE = "export"
METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}
QUANTIZER = ("onnxruntime.quantization.quantize_static (QDQ; int8 symmetric activations per tensor, "
             "int8 symmetric per-channel weights) after quant_pre_process")
EXTRA_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True}
#: activation type -> (ORT QuantType, symmetric); weights are always int8 symmetric per channel
ACTIVATIONS = {"int8": (QuantType.QInt8, True), "uint8": (QuantType.QUInt8, False)}
MIN_GATE_IMAGES = 10
SEED = 0
CALIBRATION_BATCH = 16


@documented
@dataclass(frozen=True)
class Int8Options:
    """How :func:`export_int8` calibrates and gates (the ``int8_*`` / ``calibration*`` export options)."""

    calibration: tuple[str, ...] = field(default=(), metadata={
        "help": "calibration data: image folders or data specs (digits:parity); TASK=DATA for one task only; "
                "empty: each task's recorded training data"})
    samples: int = field(default=256, metadata={"help": "calibration images in all, drawn evenly from the tasks"})
    method: str = field(default="minmax", metadata={"help": "calibration method: minmax, entropy or percentile"})
    min_agreement: float = field(default=0.98, metadata={
        "help": "least top-1 agreement of INT8 with fp32 on a task's held-out images"})
    max_drop: float = field(default=0.01, metadata={
        "help": "largest accuracy drop (fp32 - INT8, a fraction: 0.01 = 1 point) on a task's labelled held-out images"})
    fallback: bool = field(default=False, metadata={
        "help": "keep a failing task's branch in fp32 (its nodes excluded from quantization) instead of failing"})
    gate_samples: int = field(default=256, metadata={"help": "held-out images per task the gate runs at most"})
    threads: int | None = field(default=None, metadata={"help": "ONNX Runtime threads for calibration and gate"})
    activations: str = field(default="int8", metadata={
        "help": "int8: symmetric int8 activations (TensorRT's explicit quantization); uint8: asymmetric uint8 "
                "activations, what ONNX Runtime recommends for x86 CPUs (its U8S8 kernels; not for TensorRT)"})


def check_options(opts: Int8Options) -> None:
    """Refuse options that cannot work, before any export work.

    Raises:
        ExportError: an unknown method, a sample count below 8, thresholds outside 0..1.
    """
    if opts.method not in METHODS:
        raise ExportError(f"unknown calibration method '{opts.method}'; pass {{param}} minmax, entropy or percentile",
                          param="calibration_method")
    if opts.activations not in ACTIVATIONS:
        raise ExportError(f"unknown INT8 activation type '{opts.activations}'; pass {{param}} int8 (TensorRT) or "
                          "uint8 (ONNX Runtime on x86 CPUs)", param="int8_activations")
    if int(opts.samples) < 8:
        raise ExportError(f"{opts.samples} calibration images are too few; pass {{param}} of at least 8",
                          param="calibration_samples")
    if not 0.0 <= float(opts.min_agreement) <= 1.0:
        raise ExportError(f"agreement {opts.min_agreement} is not a fraction; pass {{param}} in 0..1 (0.98 = 98%)",
                          param="int8_min_agreement")
    if not 0.0 <= float(opts.max_drop) <= 1.0:
        raise ExportError(f"accuracy drop {opts.max_drop} is not a fraction; pass {{param}} in 0..1 (0.01 = 1 point)",
                          param="int8_max_drop")


def options_from(export_options) -> Int8Options:
    """The :class:`Int8Options` an :class:`~subtune_edge.exporters.ExportOptions` asks for."""
    o = export_options
    return Int8Options(calibration=tuple(str(c) for c in (o.calibration or ())), samples=int(o.calibration_samples),
                       method=o.calibration_method, min_agreement=float(o.int8_min_agreement),
                       max_drop=float(o.int8_max_drop), fallback=bool(o.int8_fallback),
                       gate_samples=int(o.int8_gate_samples), activations=str(o.int8_activations))
