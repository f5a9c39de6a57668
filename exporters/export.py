"""``export_tasks``: tasks -> a verified export directory, written atomically.

Everything is built in a hidden sibling folder of ``out`` (``.<name>.<random>.partial``) and
renamed into place only after every file was written, checked and verified; on any error the
folder is removed, so ``out`` holds either the previous export or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from subtune_edge.backbone import Backbone
from subtune_edge.errors import ExportError
from subtune_edge.multitask import StackedMultiTaskModel
from subtune_edge.task import Task

from . import manifest as manifest_mod
from . import tensorrt as trt_mod
from .fp16 import convert_fp16
from .inputs import InputBatch, image_files, verification_batches
from .onnx_export import export_onnx
from .shapes import BATCH_DIM, INPUT_NAME, check_batch, output_names
from .verify import FP16, FP32, TF32, Tolerance, compare_outputs

Progress = Callable[[str], None]
TORCHSCRIPT_OPSETS = (13, 20)
PREPROCESSING_KEYS = ("mean", "std", "interpolation", "crop_pct", "crop_mode")


# -- where the files go ---------------------------------------------------------------------------
def _staging_dir(out: Path) -> Path:
    """Create the hidden build folder next to ``out``, refusing an ``out`` we must not replace."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; choose a folder name")
    if out.is_dir() and any(out.iterdir()) and not (out / manifest_mod.MANIFEST).is_file():
        raise ExportError(f"--out {out} is a non-empty folder that is not an export; choose a new or empty folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ExportError(f"cannot write to --out {out} ({reason}); choose a writable folder") from exc


def _publish(staging: Path, out: Path) -> None:
    """Swap the finished folder into place (a previous export there is replaced)."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / out.name)
        try:
            os.replace(staging, out)
        except OSError:
            os.replace(old / out.name, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)


@contextlib.contextmanager
def _step(name: str, timings: dict, progress: Progress | None, message: str):
    if progress:
        progress(message)
    start = time.perf_counter()
    yield
    timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - start, 3)


# -- what the tasks agree on ----------------------------------------------------------------------
def _input_size(tasks: list[Task], backbone: Backbone, input_size: tuple[int, int] | None) -> tuple[int, int]:
    model_size = tuple(int(v) for v in backbone.data_config["input_size"][1:])
    if input_size is None:
        sizes = {}
        for t in tasks:
            size = t.preprocessing.get("input_size")
            sizes.setdefault(tuple(int(v) for v in size[-2:]) if size else model_size, t.name)
        if len(sizes) > 1:
            (a, ta), (b, tb) = list(sizes.items())[:2]
            raise ExportError(f"task '{tb}' was prepared at {b[0]}x{b[1]} but '{ta}' at {a[0]}x{a[1]}; "
                              "pass --input-size H,W")
        input_size = next(iter(sizes))
    h, w = (int(v) for v in input_size)
    if min(h, w) < 8:
        raise ExportError(f"input size {h}x{w} is too small; pass --input-size H,W of at least 8")
    if backbone.family == "vit" and (h, w) != model_size:
        raise ExportError(f"'{backbone.name}' was built for {model_size[0]}x{model_size[1]} inputs (its patch grid "
                          f"is fixed); export at that size, not {h}x{w}")
    return h, w


def _preprocessing(tasks: list[Task], backbone: Backbone, size: tuple[int, int]) -> dict:
    base = {**backbone.data_config, **tasks[0].preprocessing}
    for t in tasks[1:]:
        mine = {**backbone.data_config, **t.preprocessing}
        diff = [k for k in PREPROCESSING_KEYS if _norm(mine.get(k)) != _norm(base.get(k))]
        if diff:
            raise ExportError(f"task '{t.name}' uses other preprocessing than '{tasks[0].name}' ({diff[0]}: "
                              f"{mine.get(diff[0])} != {base.get(diff[0])}); one input needs one preprocessing")
    out = {k: _norm(base.get(k)) for k in PREPROCESSING_KEYS}
    out["input_size"] = [3, int(size[0]), int(size[1])]
    return {"input_size": out.pop("input_size"), **out}


def _norm(value):
    if isinstance(value, (tuple, list)):
        return [round(float(v), 6) for v in value]
    if isinstance(value, float):
        return round(value, 6)
    return value


def _load_backbone(tasks: list[Task], weights: str | None) -> Backbone:
    """The tasks' backbone, created as timm's onnx_export.py creates models (``exportable=True``)."""
    from timm.layers import set_layer_config

    from subtune_edge.multitask import backbone_for_tasks

    with set_layer_config(scriptable=False, exportable=True, no_jit=True):
        return backbone_for_tasks(tasks, weights)


# -- verification ---------------------------------------------------------------------------------
def _reference(backbone: Backbone, tasks: list[Task], outs: list[str], batches: list[InputBatch]):
    """PyTorch outputs of each task model (fp32, CPU), per batch: [{output: array}]."""
    from subtune_edge.multitask import TaskModel
    from subtune_edge.runners import TorchRunner

    refs: list[dict] = [{} for _ in batches]
    for task, name in zip(tasks, outs):
        with TorchRunner(TaskModel.from_task(backbone, task), [name]) as runner:
            for i, b in enumerate(batches):
                refs[i][name] = runner.infer({INPUT_NAME: b.array})[name]
    return refs


def _check_runner(runner, file: str, refs: list[dict], batches: list[InputBatch], tol: Tolerance,
                  tasks_by_output: dict[str, str]) -> list[dict]:
    """Run every batch, then compare each output over all batches at once (one output scale)."""
    got: dict[str, list] = {}
    with runner:
        names = [n for n in refs[0] if n in runner.output_names]
        for b in batches:
            actual = runner.infer({INPUT_NAME: b.array})
            for name in names:
                got.setdefault(name, []).append(actual[name])
    reference = {name: np.concatenate([r[name] for r in refs]) for name in names}
    actual = {name: np.concatenate(arrays) for name, arrays in got.items()}
    return [{"file": file, "task": tasks_by_output[c.output], **c.to_json(), "inputs": [b.kind for b in batches]}
            for c in compare_outputs(reference, actual, tol)]


def _raise_failures(results: list[dict]) -> None:
    failed = [r for r in results if not r["passed"]]
    if failed:
        r = failed[0]
        more = f" ({len(failed) - 1} more output(s) failed too)" if len(failed) > 1 else ""
        raise ExportError(f"verification failed for task '{r['task']}' in {r['file']}: {r['reason']}{more}; "
                          "nothing was written (export with --no-verify to inspect the files anyway)")


# -- the export -----------------------------------------------------------------------------------
def export_tasks(tasks: list[Task], out: str | Path, *, weights: str | None = None, opset: int = 17,
                 batch: tuple[int, ...] = (1, 32), input_size: tuple[int, int] | None = None, fp16: bool = False,
                 trt: bool = False, separate: bool = False, verify: bool = True, dynamo: bool = False,
                 progress: Progress | None = None, images: list[str | Path] | None = None,
                 workspace: int = trt_mod.DEFAULT_WORKSPACE, timing_cache: str | Path | None = None,
                 stacked: bool = False) -> dict:
    """Export ``tasks`` into ``out`` (see ``exporters/FORMAT.md``); returns the manifest written.

    ``stacked`` exports the variant in which frozen units shared by several branches run once on
    the branches' activations concatenated along the batch axis (helps launch-bound GPUs).

    ``batch`` is (min, max) or (min, opt, max) — opt only matters for TensorRT. ``images`` are
    extra files or folders to verify on (default: scikit-image's bundled photos). ``progress``
    receives one short message per step.
    """
    start = time.perf_counter()
    timings: dict[str, float] = {}
    if trt:
        trt_mod.require_tensorrt()  # before any other work: a missing TensorRT should cost nothing
    lo, opt, hi = check_batch(tuple(batch))
    exporter = "dynamo" if dynamo else "torchscript"
    if not dynamo and not TORCHSCRIPT_OPSETS[0] <= opset <= TORCHSCRIPT_OPSETS[1]:
        raise ExportError(f"opset {opset} is outside {TORCHSCRIPT_OPSETS[0]}..{TORCHSCRIPT_OPSETS[1]}, what the "
                          "TorchScript exporter writes; use --opset 17 (or --dynamo for 18 and later)")
    if images:
        image_files(list(images))  # a missing image is refused before any work
    tasks = list(tasks)
    outs = output_names([t.name for t in tasks])
    tasks_by_output = dict(zip(outs, (t.name for t in tasks)))
    out = Path(out)
    staging = _staging_dir(out)
    try:
        with _step("load", timings, progress, "loading the backbone and checking the tasks"):
            backbone = _load_backbone(tasks, weights)
            size = _input_size(tasks, backbone, input_size)
            preprocessing = _preprocessing(tasks, backbone, size)
        with _step("plan", timings, progress, "building the fused module and its sharing plan"):
            from subtune_edge.cost import build_fused

            fused = build_fused(backbone, tasks, size, stacked=stacked)
        onnx_reports = {}
        with _step("export", timings, progress, f"exporting model.onnx ({exporter})"):
            report = export_onnx(fused, staging / "model.onnx", outs, size, (lo, hi), opset, dynamo)
            onnx_reports["model.onnx"] = report.to_json()
            opset = report.opset
        if separate:
            from subtune_edge.multitask import TaskModel

            (staging / "separate").mkdir()
            for task, name in zip(tasks, outs):
                with _step("separate", timings, progress, f"exporting separate/{name}.onnx"):
                    rel = f"separate/{name}.onnx"
                    model = TaskModel.from_task(backbone, task)
                    onnx_reports[rel] = export_onnx(model, staging / rel, [name], size, (lo, hi), opset,
                                                    dynamo).to_json() | {"file": rel}
        if fp16:
            with _step("fp16", timings, progress, "converting to model.fp16.onnx"):
                onnx_reports["model.fp16.onnx"] = convert_fp16(staging / "model.onnx", staging / "model.fp16.onnx",
                                                               outs)
        verification: dict = {"passed": None, "skipped": "--no-verify"}
        checked = None
        if verify:
            verification, checked = _verify(backbone, tasks, outs, tasks_by_output, staging, preprocessing, size,
                                            (lo, hi), fp16, separate, images, timings, progress)
        trt_record = None
        if trt:
            with _step("tensorrt", timings, progress, "building model.plan with TensorRT"):
                recipe = trt_mod.build_recipe(trt_mod.tensorrt_version() or "0", fp16)
                shapes = trt_mod.profile_shapes((lo, opt, hi), size)
                trt_record = trt_mod.build_engine(staging, recipe, shapes, workspace=workspace,
                                                  timing_cache=timing_cache)
            if checked is not None:
                trt_record["verification"] = _verify_plan(staging, recipe, tasks_by_output, verification, checked,
                                                          timings, progress)
        timings["total"] = round(time.perf_counter() - start, 3)
        manifest = _manifest(backbone, tasks, outs, size, (lo, opt, hi), preprocessing, opset, exporter, fused,
                             onnx_reports, verification, trt_record, timings, separate)
        if progress:
            progress("hashing files and writing manifest.json")
        manifest = manifest_mod.write_manifest(staging, manifest)
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _verify(backbone, tasks, outs, tasks_by_output, staging: Path, preprocessing: dict, size, batch, fp16: bool,
            separate: bool, images, timings: dict, progress) -> tuple[dict, tuple]:
    """Every ONNX file against the PyTorch task models; returns the record and (refs, batches)."""
    from subtune_edge.runners import OrtRunner

    with _step("verify", timings, progress, "verifying every output against the PyTorch task models"):
        batches = verification_batches(preprocessing, size, batch, images)
        refs = _reference(backbone, tasks, outs, batches)
        results = _check_runner(OrtRunner(staging / "model.onnx"), "model.onnx", refs, batches, FP32,
                                tasks_by_output)
        for name in outs if separate else ():
            rel = f"separate/{name}.onnx"
            results += _check_runner(OrtRunner(staging / rel), rel, refs, batches, FP32, tasks_by_output)
        _raise_failures(results)
        if fp16:
            results += _check_runner(OrtRunner(staging / "model.fp16.onnx"), "model.fp16.onnx", refs, batches,
                                     FP16, tasks_by_output)
            _raise_failures(results)
    return {"passed": True, "tolerance": FP32.rel, "tolerances": {t.name: t.to_json() for t in (FP32, FP16, TF32)},
            "reference": "each task's PyTorch model (TaskModel), float32 on CPU", "runtime": "onnxruntime CPU",
            "inputs": [b.to_json() for b in batches], "results": results}, (refs, batches)


def _verify_plan(staging: Path, recipe, tasks_by_output, verification: dict, checked: tuple, timings,
                 progress) -> dict:
    from subtune_edge.runners import TrtRunner, missing_reason

    reason = missing_reason("trt")
    if reason:
        return {"passed": None, "skipped": reason}
    refs, batches = checked
    tol = FP16 if recipe.precision == "fp16" else TF32
    with _step("tensorrt-verify", timings, progress, "verifying model.plan"):
        results = _check_runner(TrtRunner(staging / "model.plan"), "model.plan", refs, batches, tol, tasks_by_output)
    _raise_failures(results)
    verification["results"] += results
    return {"passed": True, "tolerance": tol.name}


def _manifest(backbone: Backbone, tasks: list[Task], outs: list[str], size, batch, preprocessing: dict, opset: int,
              exporter: str, fused, onnx_reports: dict, verification: dict, trt_record: dict | None, timings: dict,
              separate: bool) -> dict:
    lo, opt, hi = batch
    dim = BATCH_DIM if lo != hi else lo
    task_records = []
    for t, name in zip(tasks, outs):
        rec = {"name": t.name, "output": name, "shape": [dim, t.num_classes], "num_classes": t.num_classes,
               "labels": list(t.labels), "tuned_units": list(t.tuned_units), "siamese": t.siamese, "mode": t.mode,
               "val_accuracy": t.training.get("val_accuracy")}
        if separate:
            rec["separate"] = f"separate/{name}.onnx"
        task_records.append(rec)
    sizes = {"fused_bytes": onnx_reports["model.onnx"]["bytes"]}
    if separate:
        sizes["separate_bytes"] = sum(r["bytes"] for f, r in onnx_reports.items() if f.startswith("separate/"))
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
        "files": {},
        "onnx": onnx_reports,
        "sizes": sizes,
        "plan": fused.plan.to_json(),
        "verification": verification,
        "tensorrt": trt_record,
        "timings_s": timings,
        "versions": manifest_mod.versions(),
    }
