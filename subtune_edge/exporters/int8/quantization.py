"""ORT's pre-processing and ``quantize_static`` (QDQ) of the fp32 graph with the merged calibration ranges."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from subtune_edge.errors import ExportError

from ..fp16 import unnamed_nodes
from ..onnx_export import check_onnx, file_bytes, save_onnx, tidy
from .options import ACTIVATIONS, EXTRA_OPTIONS, METHODS, quantizer

log = logging.getLogger(__name__)


def prepare(src: Path, dst: Path) -> onnx.ModelProto:
    """ORT's recommended pre-processing (symbolic shape inference, optimisation); every node named."""
    try:
        quant_pre_process(str(src), str(dst))
    except Exception as exc:  # the shape inference raises bare exceptions on graphs it cannot follow
        log.warning("quant_pre_process failed on %s (%s); quantizing the graph as exported", src.name, exc)
        model = onnx.load(str(src))
    else:
        model = onnx.load(str(dst))
    unnamed_nodes(model)
    onnx.save(model, str(dst))
    return model


def quantize_raw(prepared: Path, dst: Path, cache: Path, method: str, exclude: list[str],
                 activations: str = "int8") -> None:
    """``quantize_static`` (QDQ) of ``prepared`` with the ranges in ``cache``, as ORT writes it (its tensor
    names intact, which ``qdq_loss_debug`` matches on)."""
    act_type, symmetric = ACTIVATIONS[activations]
    quantize_static(str(prepared), str(dst), None, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=act_type, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                    calibrate_method=METHODS[method],
                    extra_options={**EXTRA_OPTIONS, "ActivationSymmetric": symmetric},
                    calibration_cache_path=str(cache))


def quantize(prepared: Path, dst: Path, cache: Path, method: str, exclude: list[str], outputs: list[str],
             activations: str = "int8") -> dict:
    """``quantize_static`` (QDQ, ``activations``' form) of ``prepared`` with the ranges in ``cache``; checks ``dst``."""
    quantize_raw(prepared, dst, cache, method, exclude, activations)
    # the quantizer writes one scale / zero point per tensor and the pre-processing folds equal shape
    # constants separately: merge equal initializers so that each value is stored once, as in model.onnx
    raw = onnx.load(str(dst))
    model, _, _ = tidy(raw)
    model.producer_name, model.producer_version = raw.producer_name, raw.producer_version
    save_onnx(model, dst)
    check_onnx(dst, outputs)
    for value in [*model.graph.input, *model.graph.output]:
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ExportError(f"{dst.name}: '{value.name}' is not float32 after quantization; report this")
    ops = [n.op_type for n in model.graph.node]
    size, _ = file_bytes(dst)
    return {"file": dst.name, "quantizer": quantizer(activations), "activations": activations, "bytes": size,
            "quantize_linear": ops.count("QuantizeLinear"), "dequantize_linear": ops.count("DequantizeLinear"),
            "excluded_nodes": len(exclude), "nodes": len(ops)}
