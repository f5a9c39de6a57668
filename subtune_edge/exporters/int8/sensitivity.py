"""Which activations lose the most when quantized: the order the mixed-precision search keeps them in fp32.

The QDQ graph is run (ONNX Runtime CPU) on a few of the failing tasks' own calibration images with
the input of every activation ``QuantizeLinear`` as an extra output, and each such tensor is judged
against that node's own scale. Per-tensor activation quantization fails the way outlier channels
make it fail: one channel whose range is far beyond the rest sets the step, and every other
channel's values all round to the zero point. So the ranking is by the share of *dead channels*,
those whose largest value is below one quantization step (a tensor's overall SQNR misses this: the
outlier channel carries nearly all of its energy), then by the local signal-to-quantization-noise
ratio ``10 log10(sum x^2 / sum (x - dq(q(x)))^2)``. Keeping a tensor in fp32 means keeping the nodes
around it in fp32, its producer and its consumers (an excluded node alone still reads a dequantized,
already rounded input): :func:`tensor_nodes`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from subtune_edge.runtime.onnxruntime import ort_session

from ..inputs import fit_batch
from ..shapes import INPUT_NAME

log = logging.getLogger(__name__)

#: ops whose inputs and outputs the quantizer turns into int8 compute (the nodes worth keeping in fp32)
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Sigmoid", "HardSigmoid", "Clip", "Relu",
               "Concat", "AveragePool", "GlobalAveragePool", "MaxPool", "Resize", "Softmax", "HardSwish")
_RANGES = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127)}


def _activation_quantizers(model: onnx.ModelProto) -> dict[str, tuple[float, int, int, int]]:
    """Per quantized activation: (scale, zero point, qmin, qmax) of the QuantizeLinear that reads it."""
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits or len(node.input) < 3:
            continue
        scale, zp = inits.get(node.input[1]), inits.get(node.input[2])
        if scale is None or zp is None or zp.data_type not in _RANGES:
            continue
        s, z = numpy_helper.to_array(scale), numpy_helper.to_array(zp)
        if s.size != 1:  # per-channel: a weight-like tensor, not an activation
            continue
        out[node.input[0]] = (float(s), int(z), *_RANGES[zp.data_type])
    return out


def rank_tensors(quantized: Path, images: np.ndarray, batch, work: Path) -> list[tuple[str, float, float]]:
    """The quantized activations of ``quantized`` (a QDQ graph), worst first, measured on ``images``.

    Returns:
        ``[(tensor name, dead-channel share, SQNR dB), ...]``, most dead channels first, then lowest SQNR.
    """
    model = onnx.load(str(quantized))
    quantizers = _activation_quantizers(model)
    if not quantizers:
        return []
    known = {o.name for o in model.graph.output}
    for name in quantizers:
        if name not in known:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    probe = work / "probe.onnx"
    onnx.save(model, str(probe))
    session = ort_session(str(probe), ["CPUExecutionProvider"])
    names = list(quantizers)
    signal = dict.fromkeys(names, 0.0)
    noise = dict.fromkeys(names, 0.0)
    peak: dict[str, np.ndarray] = {}
    for chunk in fit_batch(images, batch):
        values = dict(zip(names, session.run(names, {INPUT_NAME: chunk})))
        for name, x in values.items():
            scale, zp, lo, hi = quantizers[name]
            x = x.astype(np.float64)
            dq = (np.clip(np.round(x / scale) + zp, lo, hi) - zp) * scale
            signal[name] += float((x * x).sum())
            noise[name] += float(((x - dq) ** 2).sum())
            channels = np.abs(x).reshape(x.shape[0], x.shape[1], -1).max(axis=(0, 2)) if x.ndim >= 2 else np.abs(x)
            peak[name] = np.maximum(peak[name], channels) if name in peak else channels
    ranked = []
    for n in names:
        if signal[n] <= 0:
            continue
        dead = float((peak[n] < quantizers[n][0]).mean())
        ranked.append((n, dead, 10 * np.log10(signal[n] / noise[n]) if noise[n] > 0 else float("inf")))
    return sorted(ranked, key=lambda item: (-item[1], item[2]))


def tensor_nodes(model: onnx.ModelProto, tensor: str, skip: set[str]) -> list[str]:
    """The compute nodes of the fp32 graph that produce or read ``tensor`` (those keeping it out of int8),
    minus ``skip``."""
    out = []
    for node in model.graph.node:
        if node.name in skip or node.op_type not in COMPUTE_OPS:
            continue
        if tensor in node.output or tensor in node.input:
            out.append(node.name)
    return out
