"""Modular exports: ``trunk.onnx`` (the shared units once, one output per branch point) and
``branches/<task>.onnx`` (a tap in, the task's logits out), so that a task can be added, replaced or
removed without re-shipping the others, and an app can run only the tasks a frame needs.

The cut follows the fused module's sharing plan (:class:`subtune_edge.multitask.SharingPlan`): a
task leaves the trunk at its first tuned unit ``f_t``; the trunk outputs the activation *before*
each such unit as ``tap.<unit>`` (tasks with the same first tuned unit share it). Linear probes
and Siamese tasks read the frozen backbone's pooled features, ``tap.features`` (the trunk then
runs to the end, neck and pool included, as :func:`~subtune_edge.multitask.trunk_end` says); a
linear-probe branch is its head alone, a Siamese branch reads its own tap *and* ``tap.features``
(two inputs), so the frozen tail runs once in the trunk, as it does in the fused graph.

Each branch file holds the frozen units after its tuned ones (a standalone graph cannot share
weights with another file): on disk a modular export is larger than the fused graph by those units.

:func:`export_modular` writes the files into a staged export; :func:`add_tasks` and
:func:`remove_tasks` change a published export in place, atomically (the folder is copied into
a staging sibling, changed, verified and published by :func:`subtune_edge.io.staged_dir`); the
fused ``model.onnx`` is then rebuilt from trunk and branches (:func:`compose_fused`) and verified,
so it is never silently out of date.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from timm.layers import set_layer_config
from torch import nn

from subtune_edge.backbone import Backbone
from subtune_edge.errors import ExportError, TaskFileError
from subtune_edge.io import sha256_file, staged_dir
from subtune_edge.multitask import (
    BranchPlan,
    SharingPlan,
    TaskModel,
    backbone_for_tasks,
    trunk_end,
    weights_for_tasks,
)
from subtune_edge.progress import Progress, emit
from subtune_edge.runtime import OrtRunner, is_export_dir, read_manifest
from subtune_edge.runtime.modular import ModularRunner
from subtune_edge.runtime.modular_layout import (
    FEATURES_TAP,
    TRUNK_FILE,
    ModularLayout,
    branch_file,
    tap_name,
)
from subtune_edge.task import Task

from . import manifest as manifest_mod
from .inputs import verification_batches
from .onnx_export import (
    SIZE_SLACK,
    check_onnx,
    duplicate_initializers,
    file_bytes,
    module_weight_bytes,
    save_onnx,
    tidy,
)
from .shapes import BATCH_DIM, INPUT_NAME, output_names
from .verification import check_runner, raise_failures, reference_outputs
from .verify import FP32

log = logging.getLogger(__name__)

STAGE = "export"
MODULAR_FILE = "trunk.onnx+branches"  # how verification results name the modular path
#: files an add-task makes stale and removes (their graphs lack the new task); re-export to get them back
STALE_ON_ADD = ("model.fp16.onnx", "model.plan")
GRAPH_BYTES = 16 << 10  # graph structure a tiny branch (a head alone) may add to its weights


# -- the modules ----------------------------------------------------------------------------------
class TrunkModule(nn.Module):
    """Stem and the shared frozen units once; one output per tap, shallowest first.

    Args:
        backbone: the frozen backbone.
        depths: per tap, the number of units before it (``len(units) + 1`` for ``tap.features``).
    """

    def __init__(self, backbone: Backbone, depths: Sequence[int]):
        super().__init__()
        n = len(backbone.unit_names)
        self.depths = sorted(depths)
        self.features = self.depths[-1] > n
        deepest = n if self.features else self.depths[-1]
        self.stem, self.neck, self.pool = backbone.stem, backbone.neck, backbone.pool
        self.units = nn.ModuleList([backbone.units[u] for u in backbone.unit_names[:deepest]])
        self.num_units = n

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.stem(x)
        taps = {0: h}
        for i, unit in enumerate(self.units):
            h = unit(h)
            taps[i + 1] = h
        if self.features:
            taps[self.num_units + 1] = self.pool(self.neck(h))
        return tuple(taps[d] for d in self.depths)


class BranchModule(nn.Module):
    """One task from its tap(s) to its logits, as the fused module computes it.

    ``forward(tap)`` for a SubTuned task, ``forward(features)`` for a linear probe (its head alone),
    ``forward(tap, features)`` for a Siamese task (its own features beside the frozen ones).
    """

    def __init__(self, model: TaskModel):
        super().__init__()
        self.start, self.siamese = model.start, model.siamese
        self.probe = model.start == len(model.unit_names)
        self.units = nn.ModuleList(list(model.units)[model.start:])
        self.neck, self.pool, self.head = model.neck, model.pool, model.head

    def forward(self, h: torch.Tensor, frozen: torch.Tensor | None = None) -> torch.Tensor:
        if self.probe:
            return self.head(h)
        for unit in self.units:
            h = unit(h)
        features = self.pool(self.neck(h))
        if self.siamese:
            features = torch.cat([features, frozen], dim=1)
        return self.head(features)


# -- the plan of the cut --------------------------------------------------------------------------
def branch_taps(unit_names: Sequence[str], tuned_units: Sequence[str], siamese: bool) -> list[str]:
    """The taps a task's branch reads: ``tap.<first tuned unit>`` and/or ``tap.features``."""
    first = next((u for u in unit_names if u in set(tuned_units)), None)
    if first is None:
        return [FEATURES_TAP]
    return [tap_name(first), FEATURES_TAP] if siamese else [tap_name(first)]


def tap_depth(unit_names: Sequence[str], tap: str) -> int:
    """Units before ``tap`` (``len(unit_names) + 1`` for the pooled features)."""
    if tap == FEATURES_TAP:
        return len(unit_names) + 1
    return list(unit_names).index(tap[len("tap."):])


def ordered_taps(unit_names: Sequence[str], taps) -> list[str]:
    return sorted(set(taps), key=lambda t: tap_depth(unit_names, t))


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


def export_modular(backbone: Backbone, tasks: list[Task], outs: list[str], root: Path, size, batch: tuple[int, int],
                   opset: int, refs: list[dict] | None = None, batches=None, tasks_by_output: dict | None = None,
                   progress: Progress | None = None) -> tuple[dict, dict, list[dict]]:
    """Write ``trunk.onnx`` and ``branches/<output>.onnx`` for ``tasks`` into the staged export ``root``.

    Args:
        backbone: the tasks' frozen backbone.
        tasks: the tasks, in output order.
        outs: their output names.
        root: the staged export folder.
        size: the input (H, W).
        batch: the (min, max) batch range.
        opset: the ONNX opset.
        refs: the PyTorch reference outputs per verification batch (None: no verification).
        batches: the verification batches ``refs`` belong to.
        tasks_by_output: task name per output (for verification results).
        progress: called with an :class:`~subtune_edge.progress.Event` per file.

    Returns:
        The ``modular`` section, the ONNX reports by file, the verification results (empty without refs).

    Raises:
        ExportError: a file fails its checks, or a task's output through trunk and branch is past tolerance.
    """
    taps_needed = [t for task in tasks for t in branch_taps(backbone.unit_names, task.tuned_units, task.siamese)]
    emit(progress, STAGE, f"exporting {TRUNK_FILE} ({len(set(taps_needed))} taps)", step="modular")
    taps, trunk_report = export_trunk(backbone, taps_needed, root, size, batch, opset)
    reports = {TRUNK_FILE: trunk_report}
    branches = []
    for task, out in zip(tasks, outs):
        emit(progress, STAGE, f"exporting {branch_file(out)}", step="modular")
        rec = export_branch(backbone, task, out, taps, root, batch, opset)
        reports[rec["file"]] = rec.pop("report")
        branches.append(rec)
    record = layout_record(taps, branches, root, backbone.fingerprint, 1, [], "exported")
    results: list[dict] = []
    if refs is not None:
        emit(progress, STAGE, "verifying trunk + branches against the PyTorch task models", step="modular")
        results = verify_modular(root, record, refs, batches, tasks_by_output)
    return record, reports, results


def verify_modular(root: Path, record: dict, refs: list[dict], batches, tasks_by_output: dict) -> list[dict]:
    """Every task through trunk and branch (ONNX Runtime CPU) against ``refs``; raises past tolerance."""
    layout = ModularLayout.from_json(record, str(root / "manifest.json"))
    results = check_runner(ModularRunner(root, layout, INPUT_NAME), MODULAR_FILE, refs, batches, FP32,
                           tasks_by_output)
    raise_failures(results)
    return results


# -- the fused graph from the modular files -------------------------------------------------------
def compose_fused(root: Path, layout: ModularLayout, path: Path) -> dict:
    """Rebuild the fused graph from ``trunk.onnx`` and the branches: one input, one output per task.

    Each branch's nodes and weights are prefixed by its output name and wired to the trunk's tap
    tensors; the tidy pass then stores equal weights once and drops trunk nodes no branch reads.

    Returns:
        The file's report.
    """
    trunk = onnx.load(str(root / layout.trunk.file))
    graph = trunk.graph
    nodes, inits = list(graph.node), list(graph.initializer)
    outputs = []
    for b in layout.branches:
        model = onnx.load(str(root / b.file))
        keep = set(b.taps) | {b.output}
        rename = {}
        for node in model.graph.node:
            for name in node.output:
                if name and name not in keep:
                    rename[name] = f"{b.output}/{name}"
        for init in model.graph.initializer:
            rename[init.name] = f"{b.output}/{init.name}"
        for node in model.graph.node:
            new = onnx.NodeProto()
            new.CopyFrom(node)
            new.name = f"{b.output}/{node.name}"
            new.input[:] = [rename.get(n, n) for n in node.input]
            new.output[:] = [rename.get(n, n) for n in node.output]
            nodes.append(new)
        for init in model.graph.initializer:
            new = onnx.TensorProto()
            new.CopyFrom(init)
            new.name = rename[init.name]
            inits.append(new)
        outputs.append(model.graph.output[0])
    fused = onnx.helper.make_graph(nodes, "fused", [graph.input[0]], outputs, inits)
    model = onnx.helper.make_model(fused, opset_imports=list(trunk.opset_import), ir_version=trunk.ir_version,
                                   producer_name="subtune-edge")
    model, merged, _ = tidy(model)
    save_onnx(model, path)
    check_onnx(path, [b.output for b in layout.branches])
    size, _ = file_bytes(path)
    return {"file": path.name, "composed_from": [layout.trunk.file, *(b.file for b in layout.branches)],
            "opset": int(trunk.opset_import[0].version), "bytes": size, "initializers": len(model.graph.initializer),
            "merged_initializers": merged}


# -- changing a published export ------------------------------------------------------------------
def _refuse_other_weights(tasks: list[Task], manifest) -> None:
    bb = manifest.backbone
    for t in tasks:
        if t.backbone.model_name != bb["model_name"] or dict(t.backbone.model_args) != dict(bb.get("model_args") or {}):
            raise TaskFileError(f"task '{t.name}' uses backbone '{t.backbone.model_name}' but the export runs "
                                f"'{bb['model_name']}'; a modular export adds tasks of its own backbone only",
                                param="tasks")
        if bb.get("fingerprint") and t.fingerprint != bb["fingerprint"]:
            raise TaskFileError(f"task '{t.name}' was trained on other frozen weights than the export's trunk "
                                f"(fingerprint {t.fingerprint[:8]}… != {bb['fingerprint'][:8]}…); retrain it on the "
                                "export's weights or re-export every task", param="tasks")


def _copy_export(src: Path, dest: Path, manifest) -> None:
    for rel in manifest.files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, target)


def _modular_outputs(root: Path, layout: ModularLayout, batches) -> list[dict]:
    """The current outputs of every task through trunk and branches, per batch (the others' reference)."""
    runner = ModularRunner(root, layout, INPUT_NAME)
    with runner:
        return [runner.infer({INPUT_NAME: b.array}) for b in batches]


def _require_modular(manifest, where: Path) -> ModularLayout:
    layout = manifest.modular
    if layout is None:
        raise ExportError(f"{where} is not a modular export (no trunk.onnx / branches); re-export it with "
                          "modular=True (subtune-edge export --modular)")
    return layout


def _plan_json(manifest, unit_names: list[str], tasks: list[dict]) -> dict:
    """The sharing plan of the export's tasks after a change (its cost is not recomputed: ``{}``)."""
    n = len(unit_names)
    branches = []
    for t in tasks:
        start = min((unit_names.index(u) for u in t["tuned_units"]), default=n)
        branches.append(BranchPlan(t["name"], start, unit_names[start] if start < n else None,
                                   list(t["tuned_units"]), bool(t["siamese"])))
    return SharingPlan(manifest.backbone["model_name"], list(unit_names), trunk_end(n, branches), branches).to_json()


def _load_backbone(tasks: list[Task], weights: str) -> Backbone:
    """The tasks' backbone, created as the fused export creates it (``exportable=True``)."""
    with set_layer_config(scriptable=False, exportable=True, no_jit=True):
        return backbone_for_tasks(tasks, weights)


def _task_record(task: Task, output: str, dim) -> dict:
    return {"name": task.name, "output": output, "shape": [dim, task.num_classes], "num_classes": task.num_classes,
            "labels": list(task.labels), "tuned_units": list(task.tuned_units), "siamese": task.siamese,
            "mode": task.mode, "val_accuracy": task.training.get("val_accuracy")}


def _updated_manifest(manifest, staging: Path, task_records: list[dict], record: dict, reports: dict,
                      results: list[dict], change: dict, removed_files: list[str], unit_names: list[str]) -> dict:
    """The manifest after an add / remove: tasks, modular section, plan, ONNX reports, verification, sizes."""
    data = {k: v for k, v in manifest.to_json().items() if k not in ("files", "manifest_sha256")}
    data["tasks"] = task_records
    data["modular"] = record
    data["plan"] = _plan_json(manifest, unit_names, task_records)
    data["stacked_branches"] = False
    onnx_reports = {k: v for k, v in (data.get("onnx") or {}).items()
                    if k not in removed_files and (staging / k).exists()}
    data["onnx"] = {**onnx_reports, **reports}
    if "model.plan" in removed_files:
        data["tensorrt"] = None
    keep = {t["name"] for t in task_records}
    old = data.get("verification") or {}
    old_results = [r for r in old.get("results", []) if r.get("task") in keep
                   and r.get("file") not in ("model.onnx", MODULAR_FILE, *removed_files)]
    data["verification"] = {**{k: v for k, v in old.items() if k not in ("passed", "skipped")}, "passed": True,
                            "results": old_results + results}
    data["verification"].setdefault("tolerance", FP32.rel)
    sizes = dict(data.get("sizes") or {})
    sizes["fused_bytes"] = file_bytes(staging / "model.onnx")[0]
    sizes["modular_bytes"] = sum(file_bytes(staging / f)[0] for f in
                                 [TRUNK_FILE, *(b["file"] for b in record["branches"])])
    sizes.pop("ratio", None) if any(not t.get("separate") for t in task_records) else None
    data["sizes"] = sizes
    data["changes"] = [*(data.get("changes") or []), {"at": manifest_mod.now(), **change}]
    data["versions"] = manifest_mod.versions()
    return data


def add_tasks(export: str | os.PathLike, tasks: list[Task], *, weights: str | None = None,
              progress: Progress | None = None) -> dict:
    """Add (or replace, by name) tasks in a published modular export, atomically and verified.

    A task whose branch point the trunk already taps adds only ``branches/<output>.onnx``:
    ``trunk.onnx`` stays byte for byte (its sha256 too). One that needs a new tap re-exports the
    trunk with one more output from the same frozen weights (checked: the new trunk's weights are
    the old ones', plus the units a deeper tap adds) and records it as a new trunk version. The
    fused ``model.onnx`` is rebuilt from trunk and branches (:func:`compose_fused`); files whose
    graphs lack the new task (``model.fp16.onnx``, ``model.plan``; a replaced task's
    ``separate/`` copy) are removed and the manifest says so. Every task is verified: new ones
    against their PyTorch models, the others against their outputs before the change.

    Args:
        export: the modular export folder.
        tasks: the tasks to add; a task named like one of the export's replaces it.
        weights: the frozen weights source (default: the tasks' own named source).
        progress: called with an :class:`~subtune_edge.progress.Event` per step.

    Returns:
        The new manifest (JSON types).

    Raises:
        ExportError: not a modular export, a changed file, a task at another input size, a trunk
            whose weights would change, or an output past tolerance (the export is left as it was).
        TaskFileError: a task of another backbone or trained on other frozen weights.
    """
    dest = Path(os.path.abspath(export))
    manifest = read_manifest(dest)
    layout = _require_modular(manifest, dest)
    tasks = list(tasks)
    if not tasks:
        raise TaskFileError("give at least one task to add", param="tasks")
    _refuse_other_weights(tasks, manifest)
    new_names = [t.name for t in tasks]
    kept = [t for t in manifest.tasks if t.name not in new_names]
    outs = output_names([t.name for t in kept] + new_names)
    new_outs = outs[len(kept):]
    size, batch = manifest.input.hw, (manifest.batch.min, manifest.batch.max)
    for t in tasks:
        own = t.preprocessing.get("input_size")
        if own and tuple(int(v) for v in own[-2:]) != tuple(size):
            raise ExportError(f"task '{t.name}' was prepared at {own[-2]}x{own[-1]} but the export runs "
                              f"{size[0]}x{size[1]}; re-export every task at one size", param="tasks")
    weights = weights_for_tasks(tasks, weights)
    with staged_dir(dest, owns=is_export_dir, what="an export", param="export") as staging:
        emit(progress, STAGE, "loading the backbone and checking the tasks", step="load")
        backbone = _load_backbone(tasks, weights)
        if manifest.backbone.get("fingerprint") and backbone.fingerprint != manifest.backbone["fingerprint"]:
            raise TaskFileError(f"weights '{weights}' are not the export's frozen weights (fingerprint "
                                f"{backbone.fingerprint[:8]}… != {manifest.backbone['fingerprint'][:8]}…); pass "
                                "the export's weights as {param}", param="weights")
        _copy_export(dest, staging, manifest)
        batches = verification_batches(manifest.preprocessing.to_json(), size, batch)
        emit(progress, STAGE, "computing the references", step="verify")
        before = _modular_outputs(dest, layout, batches)
        fresh = reference_outputs(backbone, tasks, new_outs, batches)
        refs = [{**{t.output: b[t.output] for t in kept}, **f} for b, f in zip(before, fresh)]
        removed = []
        for t in manifest.tasks:
            if t.name in new_names:
                (staging / layout.branch(t.name).file).unlink()
                if t.separate:
                    (staging / t.separate).unlink(missing_ok=True)
                    removed.append(t.separate)
        names = backbone.unit_names
        old_taps = [t.name for t in layout.taps]
        need = ordered_taps(names, [*old_taps, *(x for t in tasks
                                                 for x in branch_taps(names, t.tuned_units, t.siamese))])
        reports: dict = {}
        version = layout.trunk.version
        if need == old_taps:
            taps = [t.to_json() for t in layout.taps]
        else:
            emit(progress, STAGE, f"rewriting {TRUNK_FILE}'s outputs: {', '.join(need)}", step="modular")
            old_weights = weight_hashes(staging / TRUNK_FILE)
            taps, reports[TRUNK_FILE] = export_trunk(backbone, need, staging, size, batch, manifest.opset)
            deeper = tap_depth(names, need[-1]) > tap_depth(names, old_taps[-1])
            new_weights = weight_hashes(staging / TRUNK_FILE)
            if (new_weights != old_weights) if not deeper else not set(old_weights) <= set(new_weights):
                raise ExportError(f"re-exporting {TRUNK_FILE} with the new tap changed its frozen weights; "
                                  "re-export every task instead")
            version += 1
        branches = [b.to_json() for b in layout.branches if b.task not in new_names]
        for task, out in zip(tasks, new_outs):
            emit(progress, STAGE, f"exporting {branch_file(out)}", step="modular")
            rec = export_branch(backbone, task, out, taps, staging, batch, manifest.opset)
            reports[rec["file"]] = rec.pop("report")
            branches.append(rec)
        record = layout_record(taps, branches, staging, layout.trunk.fingerprint, version,
                               list(layout.trunk.history), "composed")
        results = _verify_changed(staging, record, refs, batches, [t.name for t in kept] + new_names, outs, reports)
        for rel in STALE_ON_ADD:
            if (staging / rel).exists():
                (staging / rel).unlink()
                removed.append(rel)
        dim = manifest.batch.dim
        task_records = [t.to_json() for t in kept]
        for rec in task_records:
            if rec.get("separate") in removed:
                rec.pop("separate")
        task_records += [_task_record(t, o, dim) for t, o in zip(tasks, new_outs)]
        change = {"added": new_names, "removed": [], "removed_files": removed, "trunk_version": version}
        data = _updated_manifest(manifest, staging, task_records, record, reports, results, change, removed, names)
        emit(progress, STAGE, "hashing files and writing manifest.json", step="manifest")
        return manifest_mod.write_manifest(staging, data)


def _verify_changed(staging: Path, record: dict, refs, batches, names: list[str], outs: list[str],
                    reports: dict) -> list[dict]:
    """Trunk + branches, then the rebuilt fused graph, against ``refs``."""
    tasks_by_output = dict(zip(outs, names))
    results = verify_modular(staging, record, refs, batches, tasks_by_output)
    reports["model.onnx"] = compose_fused(staging, ModularLayout.from_json(record), staging / "model.onnx")
    fused = check_runner(OrtRunner(staging / "model.onnx"), "model.onnx", refs, batches, FP32, tasks_by_output)
    raise_failures(fused)
    return results + fused


def remove_tasks(export: str | os.PathLike, names: Sequence[str], *, progress: Progress | None = None) -> dict:
    """Remove tasks from a published modular export, atomically; the others stay verified.

    The trunk is left byte for byte as it is (a tap no branch reads any more costs nothing: a
    runtime only runs the trunk as deep as the requested branches need). The removed tasks'
    branch (and ``separate/``) files go, the fused ``model.onnx`` is rebuilt from trunk and the
    remaining branches, and every remaining task is checked against its outputs before the change.

    Args:
        export: the modular export folder.
        names: task names (or output names) to remove.
        progress: called with an :class:`~subtune_edge.progress.Event` per step.

    Returns:
        The new manifest (JSON types).

    Raises:
        ExportError: not a modular export, an unknown task, removing every task, a changed file.
    """
    dest = Path(os.path.abspath(export))
    manifest = read_manifest(dest)
    layout = _require_modular(manifest, dest)
    gone = {manifest.task(n).name if n in manifest.task_names + manifest.outputs else
            layout.branch(n).task for n in names}
    kept = [t for t in manifest.tasks if t.name not in gone]
    if not gone:
        raise ExportError("name at least one task to remove", param="names")
    if not kept:
        raise ExportError(f"removing {', '.join(sorted(gone))} would leave no task; an export needs at least one",
                          param="names")
    batch = (manifest.batch.min, manifest.batch.max)
    with staged_dir(dest, owns=is_export_dir, what="an export", param="export") as staging:
        _copy_export(dest, staging, manifest)
        batches = verification_batches(manifest.preprocessing.to_json(), manifest.input.hw, batch)
        emit(progress, STAGE, "computing the references", step="verify")
        before = _modular_outputs(dest, layout, batches)
        refs = [{t.output: b[t.output] for t in kept} for b in before]
        removed = []
        for t in manifest.tasks:
            if t.name in gone:
                for rel in (layout.branch(t.name).file, t.separate):
                    if rel:
                        (staging / rel).unlink(missing_ok=True)
                        removed.append(rel)
        record = layout.to_json()
        record["branches"] = [b.to_json() for b in layout.branches if b.task not in gone]
        record["fused"] = "composed"
        reports: dict = {}
        results = _verify_changed(staging, record, refs, batches, [t.name for t in kept], [t.output for t in kept],
                                  reports)
        names_all = list((manifest.info.get("plan") or {}).get("unit_names") or [])
        change = {"added": [], "removed": sorted(gone), "removed_files": removed,
                  "trunk_version": layout.trunk.version}
        data = _updated_manifest(manifest, staging, [t.to_json() for t in kept], record, reports, results, change,
                                 removed, names_all)
        emit(progress, STAGE, "hashing files and writing manifest.json", step="manifest")
        return manifest_mod.write_manifest(staging, data)
