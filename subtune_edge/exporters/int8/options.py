"""INT8 export options and constants: :class:`Int8Options`, their checks, the quantizer's settings."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field

from onnxruntime.quantization import CalibrationMethod, QuantType

from subtune_edge.docs import documented, option
from subtune_edge.errors import ExportError

STAGE = "export"
METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}


def quantizer(activations: str) -> str:
    """What was written, in words: the quantizer, the activation form, the weights."""
    form = "int8 symmetric" if activations == "int8" else "uint8 asymmetric"
    return (f"onnxruntime.quantization.quantize_static (QDQ; {form} activations per tensor, int8 symmetric "
            "per-channel weights) after quant_pre_process")


QUANTIZER = quantizer("int8")
EXTRA_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True}
#: activation type -> (ORT QuantType, symmetric); weights are always int8 symmetric per channel
ACTIVATIONS = {"int8": (QuantType.QInt8, True), "uint8": (QuantType.QUInt8, False)}
MIN_GATE_IMAGES = 10
SEED = 0
CALIBRATION_BATCH = 16


#: where an INT8 file will run -> the activation type its kernels want (the weights are int8 symmetric per channel
#: everywhere). x86 ONNX Runtime and OpenVINO: asymmetric uint8 activations (ORT's U8S8 kernels; OpenVINO's x86
#: plugin takes u8 convolution inputs); ARM ONNX Runtime: symmetric int8 (its S8S8 kernels); TensorRT: symmetric
#: int8 (explicit quantization needs zero points of 0). ``bench/int8.py`` measures the x86 and OpenVINO choice.
TARGETS = {"ort-x86": "uint8", "ort-arm": "int8", "openvino": "uint8", "trt": "int8"}


@documented
@dataclass(frozen=True)
class Int8Options:
    """How the INT8 step calibrates, quantizes and gates (``export --int8`` and its ``--calibration*`` /
    ``--int8-*`` options)."""

    target: str = field(default="auto", metadata=option(
        "where the INT8 file will run, which picks its activation form: auto (trt with --trt, else this machine: "
        "ort-x86 or ort-arm), ort-x86, ort-arm, openvino, trt; two comma-separated targets write both files from "
        "one calibration (model.int8.onnx for the first, model.int8.<target>.onnx for the second)",
        flag="--int8-target", kw="int8_target", metavar="TARGET[,TARGET]"))
    activations: str | None = field(default=None, metadata=option(
        "override the target's activation form: int8 (symmetric) or uint8 (asymmetric; not for TensorRT)",
        flag="--int8-activations", kw="int8_activations", choices=("int8", "uint8")))
    calibration: tuple[str, ...] = field(default=(), metadata=option(
        "calibration data: image folders or data specs (digits:parity); TASK=DATA for one task only; empty: each "
        "task's recorded training data", flag="--calibration", kw="calibration", multiple=True, metavar="DATA"))
    samples: int = field(default=256, metadata=option(
        "calibration images in all, drawn evenly from the tasks (seeded)", flag="--calibration-samples",
        kw="calibration_samples"))
    method: str = field(default="minmax", metadata=option(
        "how the ranges are computed from the calibration images", flag="--calibration-method",
        kw="calibration_method", choices=("minmax", "entropy", "percentile")))
    max_drop: float = field(default=0.01, metadata=option(
        "gate: the largest accuracy drop (fp32 - INT8, a fraction: 0.01 = 1 point) a task may show with confidence "
        "on its labelled held-out images", flag="--int8-max-drop", kw="int8_max_drop"))
    confidence: float = field(default=0.95, metadata=option(
        "gate: how sure the test must be that the drop exceeds --int8-max-drop before a task fails (one-sided)",
        flag="--int8-confidence", kw="int8_confidence"))
    min_agreement: float = field(default=0.98, metadata=option(
        "gate for tasks without labels: least top-1 agreement with fp32 on the held-out images whose fp32 top-2 "
        "margin is not a near-tie", flag="--int8-min-agreement", kw="int8_min_agreement"))
    fallback: bool = field(default=False, metadata=option(
        "a failing task gets automatic mixed precision: the fewest layers (trunk or branch) kept in fp32 that make "
        "every task pass, its whole branch in fp32 as the last step, instead of failing the export",
        flag="--int8-fallback", kw="int8_fallback"))
    gate_samples: int = field(default=256, metadata=option(
        "gate: held-out images per task, at most", flag="--int8-gate-samples", kw="int8_gate_samples"))
    threads: int | None = field(default=None, metadata=option(
        "ONNX Runtime threads for calibration and gate", kw="int8_threads", skip=True))


def check_options(opts: Int8Options) -> None:
    """Refuse options that cannot work, before any export work.

    Raises:
        ExportError: an unknown method, a sample count below 8, thresholds outside 0..1.
    """
    if opts.method not in METHODS:
        raise ExportError(f"unknown calibration method '{opts.method}'; pass {{param}} minmax, entropy or percentile",
                          param="calibration_method")
    if opts.activations is not None and opts.activations not in ACTIVATIONS:
        raise ExportError(f"unknown INT8 activation type '{opts.activations}'; pass {{param}} int8 (TensorRT) or "
                          "uint8 (ONNX Runtime on x86 CPUs)", param="int8_activations")
    targets = [t.strip() for t in str(opts.target).split(",") if t.strip()]
    unknown = [t for t in targets if t != "auto" and t not in TARGETS]
    if not targets or unknown or len(targets) > 2 or len(set(targets)) != len(targets) or \
            ("auto" in targets and len(targets) > 1):
        raise ExportError(f"INT8 target '{opts.target}' is not one or two of auto, {', '.join(TARGETS)}; pass "
                          "{param} ort-x86 (or ort-x86,trt)", param="int8_target")
    if not 0.5 <= float(opts.confidence) < 1.0:
        raise ExportError(f"confidence {opts.confidence} is not in [0.5, 1); pass {{param}} such as 0.95",
                          param="int8_confidence")
    if int(opts.samples) < 8:
        raise ExportError(f"{opts.samples} calibration images are too few; pass {{param}} of at least 8",
                          param="calibration_samples")
    if not 0.0 <= float(opts.min_agreement) <= 1.0:
        raise ExportError(f"agreement {opts.min_agreement} is not a fraction; pass {{param}} in 0..1 (0.98 = 98%)",
                          param="int8_min_agreement")
    if not 0.0 <= float(opts.max_drop) <= 1.0:
        raise ExportError(f"accuracy drop {opts.max_drop} is not a fraction; pass {{param}} in 0..1 (0.01 = 1 point)",
                          param="int8_max_drop")


def resolve_targets(opts: Int8Options, trt: bool = False) -> list[str]:
    """The targets the INT8 files are written for, ``auto`` resolved: TensorRT when the export builds a plan,
    else the machine exporting (x86 or ARM ONNX Runtime)."""
    targets = [t.strip() for t in str(opts.target).split(",") if t.strip()]
    if targets == ["auto"]:
        arm = platform.machine().lower() in ("aarch64", "arm64", "armv8l")
        return ["trt" if trt else "ort-arm" if arm else "ort-x86"]
    return targets


def activations_for(opts: Int8Options, target: str) -> str:
    """The activation form written for ``target`` (the ``activations`` override wins)."""
    return opts.activations or TARGETS[target]
