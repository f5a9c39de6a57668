"""The whole INT8 step: calibrate once, quantize per target, gate every task, mixed precision where one fails.

A task that fails its gate under ``fallback`` gets automatic mixed precision: the quantized
activations are ranked by how much quantizing each one loses, locally (:mod:`.sensitivity`: dead
channels first), and the fewest of the worst ones are kept in fp32 (the nodes around each) that make
every task pass, found by doubling the count until the gate passes and then bisecting down to the
smallest count that still does. Only when no prefix of the ranking rescues the task does its
whole branch go fp32, the last step; when even that fails, the shared trunk loses it and the export
stops. The manifest says which nodes stayed fp32, in which unit or branch, and each task's precision
(``int8``, ``mixed``: part of what it runs is fp32, or ``fp32``: its branch is).
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization.calibrate import save_tensors_data

from subtune_edge.errors import ExportError
from subtune_edge.progress import Progress, emit
from subtune_edge.runtime.records import Int8Figures, TaskOutput
from subtune_edge.task import Task

from .calibration import branch_nodes, calibrate, head_nodes, shape_nodes
from .gate import gate, logits
from .images import TaskImages, task_images
from .options import STAGE, TARGETS, Int8Options, activations_for, check_options, quantizer
from .quantization import prepare, quantize, quantize_raw
from .sensitivity import rank_tensors, tensor_nodes

log = logging.getLogger(__name__)

#: at most this many of the worst tensors are tried before the whole branch of a failing task goes fp32
MAX_TENSORS = 64
#: the calibration images per failing task the sensitivity ranking runs on
SENSITIVITY_IMAGES = 16


def target_file(base: str, target: str, first: bool) -> str:
    """The INT8 file of ``target``: ``model.int8.onnx`` for the first (the default), ``model.int8.<target>.onnx``."""
    stem = base.removesuffix(".onnx")
    return base if first else f"{stem}.{target}.onnx"


@dataclass
class Int8Result:
    """What :func:`export_int8` made: the file's report and the per-task records for the manifest."""

    report: dict
    tasks: dict[str, dict]


class _Graph:
    """The prepared fp32 graph and what the search needs of it: every task's branch, the nodes never quantized."""

    def __init__(self, prepared: Path, outs: list[str]):
        self.path = prepared
        self.model = onnx.load(str(prepared), load_external_data=False)
        self.branches = branch_nodes(self.model, outs)
        self.never = shape_nodes(self.model) + head_nodes(self.model, outs)
        self.outs = outs
        reach: dict[str, set[str]] = {o: set() for o in outs}  # per output: every node it depends on
        producers = {t: n for n in self.model.graph.node for t in n.output}
        for o in outs:
            todo = [o]
            while todo:
                node = producers.get(todo.pop())
                if node is not None and node.name not in reach[o]:
                    reach[o].add(node.name)
                    todo.extend(node.input)
        self.reach = reach

    def label(self, node: str, unit_names: list[str], names: dict[str, str]) -> str:
        """Where a node sits, for people: a trunk unit, the stem, or a task's branch."""
        for out, nodes in self.branches.items():
            if node in nodes:
                return f"branch of {names[out]}"
        m = re.match(r"^/trunk\.(\d+)/", node)
        if m and int(m.group(1)) < len(unit_names):
            return unit_names[int(m.group(1))]
        return "stem" if node.startswith("/stem") else "trunk"


def _attempt(graph: _Graph, dst: Path, cache: Path, opts: Int8Options, activations: str, fp32_nodes: list[str],
             fp32_branches: list[str], fp32_logits: dict, mine: dict[str, TaskImages], batch) -> tuple[dict, dict]:
    exclude = list(dict.fromkeys(graph.never + fp32_nodes + [n for o in fp32_branches for n in graph.branches[o]]))
    report = quantize(graph.path, dst, cache, opts.method, exclude, graph.outs, activations)
    results = gate(fp32_logits, logits(dst, {n: i.held_out for n, i in mine.items()}, batch, opts.threads), mine, opts)
    return report, results


def _mixed(graph: _Graph, dst: Path, cache: Path, opts: Int8Options, activations: str, failed: list[str],
           fp32_logits: dict, mine: dict[str, TaskImages], batch, work: Path, progress) -> tuple[list[str], int] | None:
    """The fewest worst tensors' nodes in fp32 that make every task pass (None: no prefix does)."""
    images = np.concatenate([mine[o].calibration[:SENSITIVITY_IMAGES] for o in failed])
    raw = work / "raw.qdq.onnx"
    quantize_raw(graph.path, raw, cache, opts.method, graph.never, activations)
    emit(progress, STAGE, f"ranking how much quantizing each tensor loses ({len(images)} images)", step="int8-mixed")
    ranked = [t for t, _, _ in rank_tensors(raw, images, batch, work)]
    skip = set(graph.never)
    groups = [nodes for nodes in (tensor_nodes(graph.model, t, skip) for t in ranked) if nodes][:MAX_TENSORS]
    if not groups:
        return None

    def nodes(k: int) -> list[str]:
        return list(dict.fromkeys(n for g in groups[:k] for n in g))

    attempts = 0

    def passes(k: int) -> bool:
        nonlocal attempts
        attempts += 1
        emit(progress, STAGE, f"quantizing with the {k} worst tensor(s) in fp32 ({len(nodes(k))} nodes)",
             step="int8-mixed")
        _, results = _attempt(graph, dst, cache, opts, activations, nodes(k), [], fp32_logits, mine, batch)
        return all(r["passed"] for r in results.values())

    k, good = 1, None
    while k <= len(groups):  # double until the gate passes ...
        if passes(k):
            good = k
            break
        k *= 2
    if good is None and k // 2 < len(groups) and passes(len(groups)):
        good = len(groups)
    if good is None:
        return None
    lo = good // 2  # ... then bisect down to the smallest count that still passes
    while good - lo > 1:
        mid = (lo + good) // 2
        if passes(mid):
            good = mid
        else:
            lo = mid
    return nodes(good), attempts


def export_int8(src: Path, dst: Path, tasks: list[Task], outs: list[str], images: dict[str, TaskImages], batch,
                opts: Int8Options, progress: Progress | None = None, targets: list[str] | None = None,
                unit_names: list[str] | None = None) -> dict[str, Int8Result]:
    """Quantize ``src`` (fp32) once per target, gate every task, rescue failing ones if allowed.

    Args:
        src: the fp32 graph (``model.onnx`` or ``separate/<task>.onnx``).
        dst: the INT8 file of the first target; a second target's goes beside it (:func:`target_file`).
        tasks: the tasks whose outputs ``src`` has, in output order.
        outs: their output names.
        images: per output, its calibration and held-out images (:func:`task_images`).
        batch: the graph's (min, max) batch.
        opts: calibration and gate options (``opts.target`` resolved to one target when ``targets`` is None).
        progress: called with an ``export`` Event per step.
        targets: the targets to write files for (one calibration for all); default ``[opts.target]``.
        unit_names: the trunk's units in order, to say where fp32 nodes sit.

    Returns:
        Per target: the file's report (``onnx`` section) and per output its manifest record.

    Raises:
        ExportError: a task fails the gate (without ``fallback``, or even with its branch in fp32).
    """
    start = time.perf_counter()
    targets = targets or [opts.target]
    names = dict(zip(outs, (t.name for t in tasks)))
    mine = {name: images[name] for name in outs}
    done: dict[str, Int8Result] = {}
    with tempfile.TemporaryDirectory(prefix="subtune-int8.") as tmp:
        work = Path(tmp)
        prepare(src, work / "prepared.onnx")
        graph = _Graph(work / "prepared.onnx", outs)
        emit(progress, STAGE, f"calibrating {dst.name} ({opts.method}, "
                              f"{sum(len(i.calibration) for i in mine.values())} images)", step="int8-calibrate")
        ranges = calibrate(graph.path, {n: i.calibration for n, i in mine.items()}, graph.branches, batch, opts.method,
                           work)
        cache = work / "calibration.json"
        save_tensors_data(ranges, cache)
        fp32_logits = logits(src, {n: i.held_out for n, i in mine.items()}, batch, opts.threads)
        for i, target in enumerate(targets):
            file = dst.with_name(target_file(dst.name, target, i == 0))
            activations = activations_for(opts, target)
            emit(progress, STAGE, f"quantizing {file.name} for {target} ({activations} activations)",
                 step="int8-quantize")
            fp32_nodes: list[str] = []
            fp32_branches: list[str] = []
            attempts = 1
            report, results = _attempt(graph, file, cache, opts, activations, [], [], fp32_logits, mine, batch)
            failed = [n for n, r in results.items() if not r["passed"]]
            if failed and not opts.fallback:
                r = results[failed[0]]
                more = f" ({len(failed) - 1} more task(s) failed too)" if len(failed) > 1 else ""
                raise ExportError(f"INT8 gate failed for task '{names[failed[0]]}' in {file.name}: {r['reason']} on "
                                  f"{r['samples']} held-out images{more}; pass {{param}} to keep the fewest layers "
                                  "that lose it in fp32, or change the calibration", param="int8_fallback")
            if failed:
                log.info("INT8 gate failed for %s in %s; searching the fewest layers to keep in fp32",
                         ", ".join(names[n] for n in failed), file.name)
                found = _mixed(graph, file, cache, opts, activations, failed, fp32_logits, mine, batch, work, progress)
                if found is not None:
                    fp32_nodes, extra = found
                    attempts += extra
                else:  # the last step: the failing tasks' whole branches in fp32
                    fp32_branches = [n for n in failed if graph.branches[n]]
                report, results = _attempt(graph, file, cache, opts, activations, fp32_nodes, fp32_branches,
                                           fp32_logits, mine, batch)
                attempts += 1
                still = [n for n, r in results.items() if not r["passed"]]
                if still:
                    r = results[still[0]]
                    raise ExportError(f"INT8 gate failed for task '{names[still[0]]}' in {file.name} even with "
                                      f"{'its branch' if fp32_branches else 'the layers that lose it'} in fp32: "
                                      f"{r['reason']}; the shared trunk loses it: change the calibration or export "
                                      "without {param}", param="int8")
                log.warning("INT8: kept %s in fp32 so that every task passes its gate (%s)",
                            f"{len(fp32_nodes)} node(s)" if fp32_nodes else
                            "the branch of " + ", ".join(names[n] for n in fp32_branches), file.name)
            labels = {n: graph.label(n, unit_names or [], names) for n in fp32_nodes}
            records = {}
            for name in outs:
                imgs = mine[name]
                kept = [n for n in fp32_nodes if n in graph.reach[name]]
                precision = "fp32" if name in fp32_branches else "mixed" if kept else "int8"
                records[name] = {"precision": precision, **results[name], "method": opts.method,
                                 "calibration": imgs.calibration_sources,
                                 "calibration_samples": int(len(imgs.calibration)),
                                 "held_out": imgs.held_out_source, "fp32_nodes": len(kept),
                                 "fp32_units": sorted({labels[n] for n in kept})}
            done[target] = Int8Result({**report, "target": target, "method": opts.method, "activations": activations,
                                       "fp32_branches": [names[n] for n in fp32_branches],
                                       "fp32_nodes": [{"node": n, "where": labels[n]} for n in fp32_nodes],
                                       "attempts": attempts, "seconds": round(time.perf_counter() - start, 3)},
                                      records)
    return done


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
               separate: bool, progress: Progress | None = None, targets: list[str] | None = None,
               unit_names: list[str] | None = None) -> Int8Export:
    """``model.int8.onnx`` (a second target's ``model.int8.<target>.onnx``; ``separate/<task>.int8.onnx`` for the
    first target), each gated per task.

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
        targets: the resolved targets (default ``[opts.target]``); the files share one calibration.
        unit_names: the trunk's units in order, to say where fp32 nodes sit.

    Returns:
        What was written, for the manifest (:meth:`Int8Export.apply`).

    Raises:
        ExportError: missing or too few calibration images, or a task failing its gate.
    """
    check_options(opts)
    targets = targets or [opts.target]
    emit(progress, STAGE, "reading the calibration and held-out images of every task", step="int8-images")
    images = task_images(tasks, outs, opts, preprocessing, size)
    fused = export_int8(staging / "model.onnx", staging / "model.int8.onnx", tasks, outs, images, batch, opts, progress,
                        targets, unit_names)
    first = fused[targets[0]]
    reports = {target_file("model.int8.onnx", t, i == 0): fused[t].report for i, t in enumerate(targets)}
    sep: dict[str, dict] = {}
    for task, name in zip(tasks, outs) if separate else ():
        rel = f"separate/{name}.int8.onnx"
        one = export_int8(staging / f"separate/{name}.onnx", staging / rel, [task], [name], images, batch, opts,
                          progress, targets[:1])[targets[0]]
        reports[rel] = {**one.report, "file": rel}
        sep[name] = one.tasks[name]
    files = {t: {"file": target_file("model.int8.onnx", t, i == 0), "activations": fused[t].report["activations"],
                 "quantizer": quantizer(fused[t].report["activations"]), "fp32_nodes": fused[t].report["fp32_nodes"],
                 "fp32_branches": fused[t].report["fp32_branches"],
                 "tasks": {out: {k: r[k] for k in ("precision", "agreement", "accuracy_fp32", "accuracy_int8",
                                                   "passed")} for out, r in fused[t].tasks.items()}}
             for i, t in enumerate(targets)}
    summary = {"file": "model.int8.onnx", "target": targets[0], "targets": files,
               "quantizer": files[targets[0]]["quantizer"], "method": opts.method,
               "activations": files[targets[0]]["activations"],
               "calibration": sorted({s for i in images.values() for s in i.calibration_sources}),
               "calibration_samples": int(sum(len(i.calibration) for i in images.values())),
               "gate": {"max_drop": opts.max_drop, "confidence": opts.confidence, "min_agreement": opts.min_agreement},
               "min_agreement": opts.min_agreement, "max_drop": opts.max_drop, "fallback": opts.fallback,
               "fp32_branches": first.report["fp32_branches"], "fp32_nodes": first.report["fp32_nodes"],
               "passed": True,
               "separate": {name: {k: r[k] for k in ("precision", "agreement", "accuracy_fp32", "accuracy_int8",
                                                     "samples")} for name, r in sep.items()}}
    return Int8Export(reports, first.tasks, sep, summary)


__all__ = ["MAX_TENSORS", "TARGETS", "Int8Export", "Int8Result", "export_all", "export_int8", "target_file"]
