"""The whole INT8 step: quantize, gate every task, fall back to fp32 branches; the fused and separate files."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from onnxruntime.quantization.calibrate import save_tensors_data

from subtune_edge.errors import ExportError
from subtune_edge.progress import Progress, emit
from subtune_edge.runtime.records import Int8Figures, TaskOutput
from subtune_edge.task import Task

from .calibration import branch_nodes, calibrate, head_nodes, shape_nodes
from .gate import gate, top1
from .images import TaskImages, task_images
from .options import QUANTIZER, STAGE, Int8Options, check_options
from .quantization import prepare, quantize

log = logging.getLogger(__name__)


# -- the whole step ---------------------------------------------------------------------------------
@dataclass
class Int8Result:
    """What :func:`export_int8` made: the file's report and the per-task records for the manifest."""

    report: dict
    tasks: dict[str, dict]


def export_int8(src: Path, dst: Path, tasks: list[Task], outs: list[str], images: dict[str, TaskImages], batch,
                opts: Int8Options, progress: Progress | None = None) -> Int8Result:
    """Quantize ``src`` (fp32) into ``dst`` (INT8 QDQ), gate every task, fall back per task if allowed.

    Args:
        src: the fp32 graph (``model.onnx`` or ``separate/<task>.onnx``).
        dst: the INT8 file to write.
        tasks: the tasks whose outputs ``src`` has, in output order.
        outs: their output names.
        images: per output, its calibration and held-out images (:func:`task_images`).
        batch: the graph's (min, max) batch.
        opts: calibration and gate options.
        progress: called with an ``export`` Event per step.

    Returns:
        The file's report (``onnx`` section) and per output its manifest record (``tasks[i].int8``).

    Raises:
        ExportError: a task fails the gate (without ``fallback``), or the quantized file is unusable.
    """
    start = time.perf_counter()
    names = dict(zip(outs, (t.name for t in tasks)))
    mine = {name: images[name] for name in outs}
    with tempfile.TemporaryDirectory(prefix="subtune-int8.") as tmp:
        work = Path(tmp)
        prepared = work / "prepared.onnx"
        model = prepare(src, prepared)
        branches = branch_nodes(model, outs)
        shape_only = shape_nodes(model) + head_nodes(model, outs)
        emit(progress, STAGE, f"calibrating {dst.name} ({opts.method}, "
                              f"{sum(len(i.calibration) for i in mine.values())} images)", step="int8-calibrate")
        ranges = calibrate(prepared, {n: i.calibration for n, i in mine.items()}, branches, batch, opts.method, work)
        cache = work / "calibration.json"
        save_tensors_data(ranges, cache)
        fp32_top1 = top1(src, {n: i.held_out for n, i in mine.items()}, batch, opts.threads)
        fp32_branch: list[str] = []
        attempts = 0
        while True:
            attempts += 1
            emit(progress, STAGE, f"quantizing {dst.name}" + (f" (fp32 branches: {', '.join(fp32_branch)})"
                                                              if fp32_branch else ""), step="int8-quantize")
            exclude = shape_only + [node for name in fp32_branch for node in branches[name]]
            report = quantize(prepared, dst, cache, opts.method, exclude, outs, opts.activations)
            emit(progress, STAGE, f"gating {dst.name} on held-out images of every task", step="int8-gate")
            results = gate(fp32_top1, top1(dst, {n: i.held_out for n, i in mine.items()}, batch, opts.threads),
                           mine, opts)
            failed = [n for n, r in results.items() if not r["passed"] and n not in fp32_branch]
            if not failed:
                break
            if not opts.fallback or len(outs) == 1 and not branches[outs[0]]:
                r = results[failed[0]]
                more = f" ({len(failed) - 1} more task(s) failed too)" if len(failed) > 1 else ""
                raise ExportError(f"INT8 gate failed for task '{names[failed[0]]}' in {dst.name}: {r['reason']} on "
                                  f"{r['samples']} held-out images{more}; pass {{param}} to keep its branch in fp32, "
                                  "or change the calibration", param="int8_fallback")
            log.warning("INT8 gate failed for %s; keeping their branches in fp32", ", ".join(names[n] for n in failed))
            fp32_branch += failed
        if fp32_branch:
            still = [n for n in fp32_branch if not results[n]["passed"]]
            if still:
                r = results[still[0]]
                raise ExportError(f"INT8 gate failed for task '{names[still[0]]}' in {dst.name} even with its branch "
                                  f"in fp32: {r['reason']}; the shared trunk loses it: change the calibration or "
                                  "export without {param}", param="int8")
    records = {}
    for name in outs:
        imgs = mine[name]
        records[name] = {"precision": "fp32" if name in fp32_branch else "int8", **results[name],
                         "method": opts.method, "calibration": imgs.calibration_sources,
                         "calibration_samples": int(len(imgs.calibration)), "held_out": imgs.held_out_source}
    report = {**report, "method": opts.method, "activations": opts.activations,
              "fp32_branches": [names[n] for n in fp32_branch],
              "attempts": attempts, "seconds": round(time.perf_counter() - start, 3)}
    return Int8Result(report, records)


@dataclass
class Int8Export:
    """The INT8 files of an export: ``onnx`` reports by file, per-output task records, the summary."""

    reports: dict[str, dict]
    tasks: dict[str, dict]
    separate: dict[str, dict]
    summary: dict

    def apply(self, tasks: list[TaskOutput]) -> list[TaskOutput]:
        """The manifest's task records with their INT8 fields: ``int8`` and ``separate_int8``."""
        out = []
        for t in tasks:
            changes: dict = {}
            if t.output in self.tasks:
                changes["int8"] = Int8Figures.from_json(self.tasks[t.output])
            if t.output in self.separate:
                changes["separate_int8"] = f"separate/{t.output}.int8.onnx"
            out.append(replace(t, **changes))
        return out


def export_all(staging: Path, tasks: list[Task], outs: list[str], preprocessing: dict, size, batch, opts: Int8Options,
               separate: bool, progress: Progress | None = None) -> Int8Export:
    """``model.int8.onnx`` (and ``separate/<task>.int8.onnx``) in ``staging``, each gated per task.

    Args:
        staging: the export folder being built (holding ``model.onnx`` and, with ``separate``, ``separate/``).
        tasks: the tasks, in output order.
        outs: their output names.
        preprocessing: the export's preprocessing record (how images become the input).
        size: the input (H, W).
        batch: the (min, max) batch.
        opts: calibration and gate options.
        separate: also quantize each ``separate/<output>.onnx``.
        progress: called with an ``export`` Event per step.

    Returns:
        What was written, for the manifest (:meth:`Int8Export.apply`).

    Raises:
        ExportError: missing or too few calibration images, or a task failing its gate.
    """
    check_options(opts)
    emit(progress, STAGE, "reading the calibration and held-out images of every task", step="int8-images")
    images = task_images(tasks, outs, opts, preprocessing, size)
    fused = export_int8(staging / "model.onnx", staging / "model.int8.onnx", tasks, outs, images, batch, opts,
                        progress)
    reports = {"model.int8.onnx": fused.report}
    sep: dict[str, dict] = {}
    for task, name in zip(tasks, outs) if separate else ():
        rel = f"separate/{name}.int8.onnx"
        one = export_int8(staging / f"separate/{name}.onnx", staging / rel, [task], [name], images, batch, opts,
                          progress)
        reports[rel] = {**one.report, "file": rel}
        sep[name] = one.tasks[name]
    summary = {"file": "model.int8.onnx", "quantizer": QUANTIZER, "method": opts.method,
               "activations": opts.activations,
               "calibration": sorted({s for i in images.values() for s in i.calibration_sources}),
               "calibration_samples": int(sum(len(i.calibration) for i in images.values())),
               "min_agreement": opts.min_agreement, "max_drop": opts.max_drop, "fallback": opts.fallback,
               "fp32_branches": fused.report["fp32_branches"], "passed": True,
               "separate": {name: {k: r[k] for k in ("precision", "agreement", "accuracy_fp32", "accuracy_int8",
                                                     "samples")} for name, r in sep.items()}}
    return Int8Export(reports, fused.tasks, sep, summary)
