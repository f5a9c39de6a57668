"""The modular files as ONNX: one graph exported and checked, the trunk, a branch, the manifest's record."""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
import torch
from torch import nn

from subtune_edge.backbone import Backbone
from subtune_edge.io import sha256_file
from subtune_edge.multitask import TaskModel
from subtune_edge.runtime.modular_layout import FEATURES_TAP, TRUNK_FILE, branch_file
from subtune_edge.task import Task

from ..onnx_export import export_onnx
from ..shapes import BATCH_DIM, INPUT_NAME
from .modules import BranchModule, TrunkModule, branch_taps, ordered_taps, tap_depth

GRAPH_BYTES = 16 << 10  # graph structure a tiny branch (a head alone) may add to its weights


# -- ONNX -----------------------------------------------------------------------------------------
def export_graph(module: nn.Module, args: tuple, input_names: list[str], outputs: list[str], path: Path,
                 batch: tuple[int, int], opset: int) -> dict:
    """Export a trunk or branch module with these input / output names, checked like the fused graph
    (:func:`~..onnx_export.export_onnx`: ``onnx.checker`` full check, no weight stored twice, no larger
    than the module's unique weights + 2% + :data:`GRAPH_BYTES`). Returns the file's report.

    Raises:
        ExportError: the exporter failed or a check did not pass.
    """
    report = export_onnx(module, path, outputs, (0, 0), batch, opset, example=args, input_names=input_names,
                         slack_bytes=GRAPH_BYTES)
    return {"file": report.file, "exporter": report.exporter, "opset": report.opset, "bytes": report.bytes,
            "initializers": report.initializers, "merged_initializers": report.merged_initializers}


def weight_hashes(path: Path) -> list[str]:
    """The sorted sha256 of every initializer's bytes: equal lists mean the same weights."""
    model = onnx.load(str(path))
    return sorted(hashlib.sha256(onnx.numpy_helper.to_array(i).tobytes()).hexdigest() for i in model.graph.initializer)


def _dim(dynamic: bool, lo: int):
    return BATCH_DIM if dynamic else lo


def export_trunk(backbone: Backbone, taps: list[str], root: Path, size, batch: tuple[int, int],
                 opset: int) -> tuple[list[dict], dict]:
    """Write ``root/trunk.onnx`` for ``taps``; returns the tap records and the file's report."""
    names = backbone.unit_names
    taps = ordered_taps(names, taps)
    module = TrunkModule(backbone, [tap_depth(names, t) for t in taps]).eval()
    lo, hi = batch
    x = torch.zeros(lo, 3, int(size[0]), int(size[1]))
    with torch.no_grad():
        values = module(x)
    report = export_graph(module, (x,), [INPUT_NAME], taps, root / TRUNK_FILE, batch, opset)
    records = []
    for t, v in zip(taps, values):
        unit = None if t == FEATURES_TAP else t[len("tap."):]
        records.append({"name": t, "unit": unit, "depth": tap_depth(names, t),
                        "shape": [_dim(lo != hi, lo), *map(int, v.shape[1:])], "dtype": "float32"})
    return records, report


def export_branch(backbone: Backbone, task: Task, output: str, taps: list[dict], root: Path,
                  batch: tuple[int, int], opset: int) -> dict:
    """Write ``root/branches/<output>.onnx`` for ``task``; returns its branch record (with the file's report)."""
    names = branch_taps(backbone.unit_names, task.tuned_units, task.siamese)
    shapes = {t["name"]: t["shape"] for t in taps}
    lo, hi = batch
    args = tuple(torch.zeros(lo, *shapes[n][1:]) for n in names)
    module = BranchModule(TaskModel.from_task(backbone, task)).eval()
    rel = branch_file(output)
    (root / rel).parent.mkdir(exist_ok=True)
    report = export_graph(module, args, names, [output], root / rel, batch, opset)
    return {"task": task.name, "output": output, "file": rel, "taps": names, "report": report | {"file": rel}}


def layout_record(taps: list[dict], branches: list[dict], root: Path, fingerprint: str, version: int,
                  history: list[dict], fused: str) -> dict:
    """The manifest's ``modular`` section for the files in ``root``."""
    digest = sha256_file(root / TRUNK_FILE)
    units = max((t["depth"] for t in taps if t["unit"] is not None), default=0)
    if any(t["unit"] is None for t in taps):
        units = max(units, taps[-1]["depth"] - 1)
    history = [*history, {"version": version, "sha256": digest, "taps": [t["name"] for t in taps]}] \
        if not history or history[-1]["sha256"] != digest else list(history)
    return {"trunk": {"file": TRUNK_FILE, "sha256": digest, "fingerprint": fingerprint, "version": version,
                      "units": units, "history": history},
            "taps": taps, "branches": [{k: b[k] for k in ("task", "output", "file", "taps")} for b in branches],
            "fused": fused}
