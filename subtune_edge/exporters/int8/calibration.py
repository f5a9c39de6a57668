"""Where the graph splits (trunk, branches, shape arithmetic, heads) and the per-task calibration ranges."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, create_calibrator
from onnxruntime.quantization.calibrate import TensorData, TensorsData

from ..shapes import INPUT_NAME
from .options import CALIBRATION_BATCH, METHODS


# -- the graph --------------------------------------------------------------------------------------
def branch_nodes(model: onnx.ModelProto, outputs: list[str]) -> dict[str, list[str]]:
    """Per graph output: the names of the nodes that feed that output and no other (its branch).

    A node's reach is the set of graph outputs its outputs flow into; the trunk reaches several,
    a task's branch only its own.
    """
    graph = model.graph
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for t in node.input:
            consumers.setdefault(t, []).append(i)
    reach: dict[int, frozenset] = {}
    # ONNX nodes are topologically sorted: walk backwards so every consumer is known first
    for i in range(len(graph.node) - 1, -1, -1):
        node = graph.node[i]
        r: set = set()
        for t in node.output:
            if t in outputs:
                r.add(t)
            for c in consumers.get(t, ()):
                r |= reach[c]
        reach[i] = frozenset(r)
    out: dict[str, list[str]] = {o: [] for o in outputs}
    for i, node in enumerate(graph.node):
        if len(reach[i]) == 1:
            out[next(iter(reach[i]))].append(node.name)
    return out


SHAPE_OPS = ("Shape", "Size")


def shape_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes off the data path: shape arithmetic (TF "same" padding, reshapes) and constants.

    A node is on the data path when one of its inputs comes from the graph input through nodes
    other than ``Shape`` / ``Size``. The rest compute sizes in float (``Cast(to=float)`` of a shape,
    then ceil / mul / sub): quantizing them would round padding amounts, so they stay as they are.
    """
    graph = model.graph
    tainted = {i.name for i in graph.input} - {i.name for i in graph.initializer}
    off = []
    for node in graph.node:
        if node.op_type not in SHAPE_OPS and any(t in tainted for t in node.input):
            tainted.update(node.output)
        else:
            off.append(node.name)
    return off


def head_nodes(model: onnx.ModelProto, outputs: list[str]) -> list[str]:
    """Names of the nodes that write the graph outputs (each task's classifier head).

    They stay fp32: 8-bit logits flip the top-1 of near-ties, and a head is a tiny share of the FLOPs.
    """
    return [n.name for n in model.graph.node if any(t in outputs for t in n.output)]


def _tensors_of(model: onnx.ModelProto, names: set[str]) -> set[str]:
    return {t for node in model.graph.node if node.name in names for t in node.output}


class ArrayReader(CalibrationDataReader):
    """ORT's calibration reader over a preprocessed NCHW array, in batches the graph accepts."""

    def __init__(self, array: np.ndarray, batch: tuple[int, int], input_name: str = INPUT_NAME):
        lo, hi = batch
        size = max(lo, min(hi, CALIBRATION_BATCH, len(array)))
        # equal-sized batches (the histogram collectors stack them): the last one wraps around to the first images
        padded = np.concatenate([array, array[:(-len(array)) % size]]) if len(array) % size else array
        self._chunks = [np.ascontiguousarray(padded[i:i + size]) for i in range(0, len(padded), size)]
        self._input_name = input_name
        self._i = 0

    def get_next(self) -> dict | None:
        if self._i >= len(self._chunks):
            return None
        self._i += 1
        return {self._input_name: self._chunks[self._i - 1]}


def _collect(model_path: Path, array: np.ndarray, batch, method: str, work: Path, tag: str) -> dict:
    calibrator = create_calibrator(model_path, None, augmented_model_path=str(work / f"augmented.{tag}.onnx"),
                                   calibrate_method=METHODS[method])
    with contextlib.redirect_stdout(io.StringIO()):  # ORT's histogram collectors print progress lines
        calibrator.collect_data(ArrayReader(array, batch))
        data = calibrator.compute_data()
    del calibrator
    return dict(data.data)


def _union(a: TensorData, b: TensorData) -> TensorData:
    return TensorData(lowest=np.minimum(a.range_value[0], b.range_value[0]).astype(np.float32),
                      highest=np.maximum(a.range_value[1], b.range_value[1]).astype(np.float32))


def calibrate(model_path: Path, images: dict[str, np.ndarray], branches: dict[str, list[str]], batch, method: str,
              work: Path) -> TensorsData:
    """Ranges of every tensor: a branch's from its own task's images, the trunk's from all of them.

    Args:
        model_path: the pre-processed fp32 graph.
        images: per output, that task's calibration images (NCHW float32).
        branches: per output, its branch nodes (:func:`branch_nodes`).
        batch: the graph's (min, max) batch.
        method: ``minmax``, ``entropy`` or ``percentile``.
        work: a scratch folder for ORT's augmented models.

    Returns:
        ORT's :class:`TensorsData`, as ``quantize_static`` reads it from a calibration cache.
    """
    model = onnx.load(str(model_path), load_external_data=False)
    per_task = {name: _collect(model_path, arr, batch, method, work, f"t{i}")
                for i, (name, arr) in enumerate(images.items())}
    if method == "minmax":
        trunk: dict = {}
        for ranges in per_task.values():
            for key, value in ranges.items():
                trunk[key] = _union(trunk[key], value) if key in trunk else value
    else:  # histograms do not merge into the same entropy / percentile: one pass over the whole mix
        trunk = _collect(model_path, np.concatenate(list(images.values())), batch, method, work, "mix")
    merged = dict(trunk)
    for name, nodes in branches.items():
        for tensor in _tensors_of(model, set(nodes)):
            if tensor in per_task.get(name, {}):
                merged[tensor] = per_task[name][tensor]
    return TensorsData(METHODS[method], {k: TensorData(lowest=np.asarray(v.range_value[0], np.float32),
                                                       highest=np.asarray(v.range_value[1], np.float32))
                                         for k, v in merged.items()})
