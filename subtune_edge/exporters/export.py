"""``export_tasks``: tasks -> a verified export directory, written atomically.

Everything is built in a hidden sibling folder of ``out`` (:func:`subtune_edge.io.staged_dir`)
and published only after every file was written, checked and verified; on any error the folder
is removed, so ``out`` holds either the previous export or the new one, never half of one. An
existing ``out`` is replaced only when :func:`subtune_edge.runtime.is_export_dir` recognises it
as an earlier export holding nothing else: a user's folder is refused before any work.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from subtune_edge.backbone import Backbone
from subtune_edge.cost import build_fused
from subtune_edge.docs import documented
from subtune_edge.errors import ExportError
from subtune_edge.io import staged_dir
from subtune_edge.multitask import StackedMultiTaskModel, TaskModel, weights_for_tasks
from subtune_edge.multitask.grouped import GroupedMultiTaskModel
from subtune_edge.progress import Progress, emit
from subtune_edge.runtime import is_export_dir
from subtune_edge.task import Task

from . import int8 as int8_mod
from . import manifest as manifest_mod
from . import tensorrt as trt_mod
from .fp16 import convert_fp16
from .inputs import image_files
from .modular import export_modular
from .onnx_export import export_onnx
from .ort_format import convert_to_ort
from .shapes import BATCH_DIM, INPUT_NAME, check_batch, output_names
from .task_input import input_size_for, load_backbone, preprocessing_for, task_size
from .verification import STAGE, check_verify_with, step, verify_files, verify_on, verify_ort_format, verify_plan

TORCHSCRIPT_OPSETS = (13, 20)


@documented
@dataclass(frozen=True)
class ExportOptions:
    """How :func:`export_tasks` exports; every field is also a keyword of ``export_tasks``."""

    weights: str | None = field(default=None, metadata={
        "help": "where the frozen weights come from (timm, offline, random, or a file); None: the source the "
                "tasks recorded, when it is a named source (a file is never taken from a task file)"})
    opset: int = field(default=17, metadata={"help": "ONNX opset (TorchScript exporter 13..20, dynamo 18+)"})
    batch: tuple[int, ...] = field(default=(1, 32), metadata={
        "help": "(min, max) or (min, opt, max) batch; min == max is a fixed batch; opt is TensorRT's tuning batch"})
    input_size: tuple[int, int] | None = field(default=None, metadata={
        "help": "(H, W) of the input; None: the size the tasks were prepared at"})
    allow_resize: bool = field(default=False, metadata={
        "help": "allow an input_size other than the tasks' own (recorded per task as resized_from)"})
    fp16: bool = field(default=False, metadata={"help": "also write model.fp16.onnx"})
    trt: bool = field(default=False, metadata={"help": "also build model.plan with TensorRT"})
    modular: bool = field(default=False, metadata={
        "help": "also write trunk.onnx (one output per branch point) and branches/<task>.onnx, so tasks can be "
                "added or removed later and an app can run only some (TorchScript exporter)"})
    separate: bool = field(default=False, metadata={"help": "also write separate/<task>.onnx, each task alone"})
    verify: bool = field(default=True, metadata={"help": "compare every output with the PyTorch task models"})
    dynamo: bool = field(default=False, metadata={"help": "use the torch.export-based ONNX exporter"})
    stacked: bool = field(default=False, metadata={
        "help": "run frozen units shared by several branches once, on batch-stacked activations"})
    grouped: bool = field(default=False, metadata={
        "help": "run the branches of tasks tuning the same units as one wider network (stacked filters, grouped "
                "convolutions; ResNet, EfficientNet, MobileNetV3); not with stacked"})
    images: tuple[str | Path, ...] | None = field(default=None, metadata={
        "help": "image files or folders to verify on besides the seeded batch (default: bundled photos)"})
    workspace: int = field(default=trt_mod.DEFAULT_WORKSPACE, metadata={"help": "TensorRT workspace, bytes"})
    timing_cache: str | Path | None = field(default=None, metadata={
        "help": "TensorRT timing cache file (default: ~/.cache/subtune-edge/)"})
    int8: bool = field(default=False, metadata={
        "help": "also write model.int8.onnx (and separate/<task>.int8.onnx): INT8 QDQ, calibrated on every task's "
                "images, each task gated against fp32"})
    calibration: tuple[str, ...] | None = field(default=None, metadata={
        "help": "INT8 calibration data: image folders or data specs (digits:parity), TASK=DATA for one task; "
                "None: each task's recorded training data"})
    calibration_samples: int = field(default=256, metadata={"help": "INT8 calibration images in all (seeded mix)"})
    calibration_method: str = field(default="minmax", metadata={
        "help": "INT8 calibration: minmax, entropy or percentile"})
    int8_min_agreement: float = field(default=0.98, metadata={
        "help": "INT8 gate: least top-1 agreement with fp32 per task on held-out images"})
    int8_max_drop: float = field(default=0.01, metadata={
        "help": "INT8 gate: largest accuracy drop per task (a fraction: 0.01 = 1 point)"})
    int8_gate_samples: int = field(default=256, metadata={"help": "INT8 gate: held-out images per task, at most"})
    int8_activations: str = field(default="int8", metadata={
        "help": "INT8 activations: int8 (symmetric; TensorRT) or uint8 (asymmetric; ONNX Runtime's x86 CPU kernels)"})
    int8_fallback: bool = field(default=False, metadata={
        "help": "keep the branch of a task failing the INT8 gate in fp32 instead of failing the export"})
    ort_format: bool = field(default=False, metadata={
        "help": "also write model.ort (+ model.fp16.ort / model.int8.ort) and required_operators.config: "
                "ONNX Runtime's mobile format, verified like the .onnx files"})
    verify_with: tuple[str, ...] = field(default=(), metadata={
        "help": "registered runtimes to verify the fused files on besides ONNX Runtime CPU (openvino, ort-cuda, a "
                "plug-in's)"})


OPTION_NAMES = tuple(f.name for f in fields(ExportOptions))


# -- the export -----------------------------------------------------------------------------------
def export_tasks(tasks: list[Task], out: str | Path, options: ExportOptions | None = None, *,
                 progress: Progress | None = None, **overrides) -> dict:
    """Export ``tasks`` as one fused, verified ONNX graph (+ optional files) into ``out``.

    The folder is built beside ``out`` and published only when every file is written, every
    output verified against the PyTorch task models and the manifest sealed (see
    ``exporters/FORMAT.md``). An existing ``out`` is replaced only when it is an earlier export
    and holds nothing else; any other non-empty folder is refused before any work.

    Args:
        tasks: the tasks, in output order; they must share one backbone and its frozen weights.
        out: the export folder to write (or replace).
        options: how to export (:class:`ExportOptions`); its fields may also be given as keywords,
            which override it: ``export_tasks(tasks, "out", separate=True, batch=(1, 8))``.
        progress: called with a :class:`~subtune_edge.progress.Event` (stage ``"export"``) per step.
        **overrides: :class:`ExportOptions` fields (``weights``, ``opset``, ``batch``,
            ``input_size``, ``allow_resize``, ``fp16``, ``trt``, ``separate``, ``verify``, ``dynamo``,
            ``stacked``, ``grouped``, ``images``, ``workspace``, ``timing_cache``,
            ``ort_format``, ``verify_with``).

    Returns:
        The manifest as written to ``out/manifest.json`` (JSON types).

    Raises:
        ExportError: ``out`` may not be replaced, options that cannot work, tasks that cannot be
            fused, or an output past its verification tolerance (nothing is written then).
        TaskFileError: tasks of different backbones or frozen weights.
        WeightsError: the tasks were trained on a weights file and ``weights`` does not name it again.
        RuntimeMissingError: ``trt`` without TensorRT, ``verify_with`` a runtime that is not installed (both
            checked before any work).
        TypeError: a keyword that is not an :class:`ExportOptions` field.
    """
    unknown = sorted(set(overrides) - set(OPTION_NAMES))
    if unknown:
        raise TypeError(f"export_tasks() got unknown option(s) {', '.join(unknown)}; "
                        f"options: {', '.join(OPTION_NAMES)}")
    opts = replace(options or ExportOptions(), **overrides)
    start = time.perf_counter()
    timings: dict[str, float] = {}
    if opts.trt:
        trt_mod.require_tensorrt()  # before any other work: a missing TensorRT should cost nothing
    verify_on_specs = check_verify_with(tuple(opts.verify_with), opts.verify)
    if opts.int8:
        int8_mod.check_options(int8_mod.options_from(opts))  # before any work
        if opts.trt and opts.int8_activations != "int8":
            raise ExportError("TensorRT's explicit quantization needs symmetric int8 activations; pass {param} int8 "
                              "with trt", param="int8_activations")
    lo, opt, hi = check_batch(tuple(opts.batch))
    exporter = "dynamo" if opts.dynamo else "torchscript"
    opset = opts.opset
    if not opts.dynamo and not TORCHSCRIPT_OPSETS[0] <= opset <= TORCHSCRIPT_OPSETS[1]:
        raise ExportError(f"opset {opset} is outside {TORCHSCRIPT_OPSETS[0]}..{TORCHSCRIPT_OPSETS[1]}, what the "
                          "TorchScript exporter writes; use {param} 17 (or the dynamo exporter for 18 and later)",
                          param="opset")
    images = list(opts.images) if opts.images else None
    if images:
        image_files(images)  # a missing or unreadable image is refused before any work
    tasks = list(tasks)
    outs = output_names([t.name for t in tasks])
    tasks_by_output = dict(zip(outs, (t.name for t in tasks)))
    weights = weights_for_tasks(tasks, opts.weights)  # a weights file named in a task file is never opened
    # absolute and normalised: '.' or 'a/..' must name the folder itself, not an empty name beside it
    dest = Path(os.path.abspath(out))
    with staged_dir(dest, owns=is_export_dir, what="an export", param="out") as staging:
        with step("load", timings, progress, "loading the backbone and checking the tasks"):
            backbone = load_backbone(tasks, weights)
            size = input_size_for(tasks, backbone, opts.input_size, opts.allow_resize)
            preprocessing = preprocessing_for(tasks, backbone, size)
        with step("plan", timings, progress, "building the fused module and its sharing plan"):
            fused = build_fused(backbone, tasks, size, stacked=opts.stacked, grouped=opts.grouped)
        onnx_reports = {}
        with step("export", timings, progress, f"exporting model.onnx ({exporter})"):
            report = export_onnx(fused, staging / "model.onnx", outs, size, (lo, hi), opset, opts.dynamo)
            onnx_reports["model.onnx"] = report.to_json()
            opset = report.opset
        if opts.separate:
            (staging / "separate").mkdir()
            for task, name in zip(tasks, outs):
                with step("separate", timings, progress, f"exporting separate/{name}.onnx"):
                    rel = f"separate/{name}.onnx"
                    model = TaskModel.from_task(backbone, task)
                    onnx_reports[rel] = export_onnx(model, staging / rel, [name], size, (lo, hi), opset,
                                                    opts.dynamo).to_json() | {"file": rel}
        if opts.fp16:
            with step("fp16", timings, progress, "converting to model.fp16.onnx"):
                onnx_reports["model.fp16.onnx"] = convert_fp16(staging / "model.onnx", staging / "model.fp16.onnx",
                                                               outs)
        int8_export = None
        if opts.int8:
            with step("int8", timings, progress, "quantizing to model.int8.onnx (calibration, per-task gate)"):
                int8_export = int8_mod.export_all(staging, tasks, outs, preprocessing, size, (lo, hi),
                                                  int8_mod.options_from(opts), opts.separate, progress)
                onnx_reports.update(int8_export.reports)
        ort_record = None
        if opts.ort_format:
            with step("ort-format", timings, progress, "converting to ONNX Runtime's .ort format"):
                ort_record = convert_to_ort(staging)
        verification: dict = {"passed": None, "skipped": "--no-verify"}
        checked = None
        if opts.verify:
            verification, checked = verify_files(backbone, tasks, outs, tasks_by_output, staging, preprocessing, size,
                                            (lo, hi), opts.fp16, opts.separate, images, timings, progress)
            for spec in verify_on_specs:
                verify_on(spec, staging, verification, checked, tasks_by_output, timings, progress)
            if ort_record is not None:
                verify_ort_format(staging, ort_record, verification, checked, tasks_by_output, timings, progress)
        modular_record = None
        if opts.modular:
            with step("modular", timings, progress, "exporting trunk.onnx and branches/"):
                refs, vbatches = checked if checked is not None else (None, None)
                modular_record, reports, results = export_modular(backbone, tasks, outs, staging, size, (lo, hi),
                                                                  opset, refs, vbatches, tasks_by_output, progress)
                onnx_reports.update(reports)
                if results:
                    verification["results"] += results
        trt_record = None
        if opts.trt:
            with step("tensorrt", timings, progress, "building model.plan with TensorRT"):
                recipe = trt_mod.build_recipe(trt_mod.tensorrt_version() or "0", opts.fp16, int8=opts.int8)
                shapes = trt_mod.profile_shapes((lo, opt, hi), size)
                trt_record = trt_mod.build_engine(staging, recipe, shapes, workspace=opts.workspace,
                                                  timing_cache=opts.timing_cache)
            if recipe.precision == "int8":  # INT8 logits are not within TF32 of PyTorch: model.int8.onnx was gated
                trt_record["verification"] = {"passed": None, "skipped": "an INT8 engine: its source model.int8.onnx "
                                                                          "passed the per-task INT8 gate"}
            elif checked is not None:
                trt_record["verification"] = verify_plan(staging, recipe, tasks_by_output, verification, checked,
                                                          timings, progress)
        timings["total"] = round(time.perf_counter() - start, 3)
        record = _manifest(backbone, tasks, outs, size, (lo, opt, hi), preprocessing, opset, exporter, fused,
                           onnx_reports, verification, trt_record, timings, opts.separate)
        if modular_record is not None:
            record["modular"] = modular_record
        if ort_record is not None:
            record["ort_format"] = ort_record
        if int8_export is not None:
            int8_export.apply(record)
        emit(progress, STAGE, "hashing files and writing manifest.json", step="manifest")
        manifest = manifest_mod.write_manifest(staging, record)
    return manifest


def _grouped_record(fused, outs: list[str]) -> dict | None:
    """Which tasks run as one grouped branch (None for an export without ``grouped``)."""
    if not isinstance(fused, GroupedMultiTaskModel):
        return None
    return {"groups": [[outs[j] for j in members] for members in fused.groups],
            "starts": [fused.plan.branches[members[0]].start_unit for members in fused.groups]}


def _manifest(backbone: Backbone, tasks: list[Task], outs: list[str], size, batch, preprocessing: dict, opset: int,
              exporter: str, fused, onnx_reports: dict, verification: dict, trt_record: dict | None, timings: dict,
              separate: bool) -> dict:
    lo, opt, hi = batch
    dim = BATCH_DIM if lo != hi else lo
    model_size = tuple(int(v) for v in backbone.data_config["input_size"][1:])
    task_records = []
    for t, name in zip(tasks, outs):
        rec = {"name": t.name, "output": name, "shape": [dim, t.num_classes], "num_classes": t.num_classes,
               "labels": list(t.labels), "tuned_units": list(t.tuned_units), "siamese": t.siamese, "mode": t.mode,
               "val_accuracy": t.training.get("val_accuracy")}
        if separate:
            rec["separate"] = f"separate/{name}.onnx"
        own = task_size(t, model_size)
        if own != tuple(size):
            rec["resized_from"] = list(own)
        task_records.append(rec)
    sizes = {"fused_bytes": onnx_reports["model.onnx"]["bytes"]}
    if separate:
        sizes["separate_bytes"] = sum(r["bytes"] for f, r in onnx_reports.items()
                                      if f.startswith("separate/") and not f.endswith(".int8.onnx"))
        sizes["ratio"] = round(sizes["fused_bytes"] / sizes["separate_bytes"], 4)
    return {
        "format": manifest_mod.FORMAT, "format_version": manifest_mod.FORMAT_VERSION, "created": manifest_mod.now(),
        "backbone": {**backbone.spec.to_json(), "family": backbone.family, "fingerprint": backbone.fingerprint},
        "input": {"name": INPUT_NAME, "dtype": "float32", "layout": "NCHW", "shape": [dim, 3, int(size[0]),
                                                                                      int(size[1])]},
        "batch": {"min": lo, "opt": opt, "max": hi, "dynamic": lo != hi},
        "preprocessing": preprocessing,
        "tasks": task_records,
        "opset": opset,
        "exporter": exporter,
        "stacked_branches": isinstance(fused, StackedMultiTaskModel),
        "grouped_branches": _grouped_record(fused, outs),
        "onnx": onnx_reports,
        "sizes": sizes,
        "plan": fused.plan.to_json(),
        "verification": verification,
        "tensorrt": trt_record,
        "timings_s": timings,
        "versions": manifest_mod.versions(),
    }
