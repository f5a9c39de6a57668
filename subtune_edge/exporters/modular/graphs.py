"""The modular files as ONNX: one graph exported and checked, the trunk, a branch, the manifest's record."""

from __future__ import annotations

import contextlib
import hashlib
import io
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from subtune_edge.backbone import Backbone
from subtune_edge.errors import ExportError
from subtune_edge.io import sha256_file
from subtune_edge.multitask import TaskModel
from subtune_edge.runtime.modular_layout import FEATURES_TAP, TRUNK_FILE, branch_file
from subtune_edge.task import Task

from ..onnx_export import SIZE_SLACK, duplicate_initializers, file_bytes, module_weight_bytes, save_onnx, tidy
from ..shapes import BATCH_DIM, INPUT_NAME
from .modules import BranchModule, TrunkModule, branch_taps, ordered_taps, tap_depth

GRAPH_BYTES = 16 << 10  # graph structure a tiny branch (a head alone) may add to its weights


# -- ONNX -----------------------------------------------------------------------------------------
def export_graph(module: nn.Module, args: tuple, input_names: list[str], outputs: list[str], path: Path,
                 dynamic: bool, opset: int) -> dict:
    """Export ``module`` (TorchScript exporter) with these input / output names; tidy, save and check it.

    The checks are the fused graph's (``onnx.checker`` full check, no weight stored twice, no larger
    than the module's unique weights + 2%). Returns the file's report.

    Raises:
        ExportError: the exporter failed or a check did not pass.
    """
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=path.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        axes = {n: {0: BATCH_DIM} for n in [*input_names, *outputs]} if dynamic else None
        try:
            with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(module.eval(), args, str(raw), input_names=input_names, output_names=outputs,
                                  dynamic_axes=axes, opset_version=opset, dynamo=False, export_params=True,
                                  do_constant_folding=True)
        except Exception as exc:  # the exporter raises many types; all mean "this module did not export"
            msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ExportError(f"exporting {path.name} failed ({msg}); report this with the model name") from exc
        model = onnx.load(str(raw))
    model, merged, _ = tidy(model)
    with torch.no_grad():
        values = module(*args)
    values = values if isinstance(values, tuple) else (values,)
    _set_shapes(model, {**dict(zip(input_names, (a.shape for a in args))),
                        **dict(zip(outputs, (v.shape for v in values)))}, dynamic)
    model.producer_name = "subtune-edge"
    save_onnx(model, path)
    _check(path, input_names, outputs, module_weight_bytes(module))
    size, _ = file_bytes(path)
    return {"file": path.name, "exporter": "torchscript", "opset": opset, "bytes": size,
            "initializers": len(model.graph.initializer), "merged_initializers": merged}


def _set_shapes(model: onnx.ModelProto, shapes: dict, dynamic: bool) -> None:
    """Every graph input / output gets its real shape (the exporter's symbolic inference may mislabel
    spatial dims of intermediate tensors), dim 0 named ``batch`` when the batch is dynamic."""
    for value in [*model.graph.input, *model.graph.output]:
        if value.name not in shapes:
            continue
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for i, d in enumerate(shapes[value.name]):
            dim = dims.add()
            if i == 0 and dynamic:
                dim.dim_param = BATCH_DIM
            else:
                dim.dim_value = int(d)


def _check(path: Path, inputs: list[str], outputs: list[str], module_bytes: int | None) -> None:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise ExportError(f"{path.name} fails onnx.checker ({first}); report this with the model name") from exc
    model = onnx.load(str(path))
    got_in = [i.name for i in model.graph.input]
    got_out = [o.name for o in model.graph.output]
    if got_in != inputs or got_out != outputs:
        raise ExportError(f"{path.name} has {got_in} -> {got_out}, expected {inputs} -> {outputs}")
    dups = duplicate_initializers(model)
    if dups:
        raise ExportError(f"{path.name} stores {len(dups)} weight(s) twice (e.g. '{dups[0][1]}' = '{dups[0][0]}')")
    if module_bytes:
        size, _ = file_bytes(path)
        if size > module_bytes * (1 + SIZE_SLACK) + GRAPH_BYTES:
            raise ExportError(f"{path.name} is {size / 1e6:.1f} MB but its module's unique weights are "
                              f"{module_bytes / 1e6:.1f} MB: weights are duplicated")


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
    report = export_graph(module, (x,), [INPUT_NAME], taps, root / TRUNK_FILE, lo != hi, opset)
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
    report = export_graph(module, args, names, [output], root / rel, lo != hi, opset)
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
