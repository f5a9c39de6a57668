"""fp32 ONNX -> calibrated INT8 QDQ ONNX (``model.int8.onnx``), with a per-task accuracy gate.

The quantizer is ONNX Runtime's own (``onnxruntime.quantization``): ``quant_pre_process`` (shape
inference + graph optimisation, as ORT recommends before QDQ), then ``quantize_static`` in QDQ
format with int8 symmetric activations (per tensor) and int8 symmetric per-channel weights. Why
this one: QDQ with zero points of 0 is what TensorRT's explicit quantization reads (TensorRT 10
with the INT8 flag, 11 strongly typed), the same file runs on ORT's CPU int8 kernels, and
onnxruntime is already a dependency (NVIDIA ModelOpt would add a heavy one). On x86 CPUs ORT's
fast kernels are U8S8: ``activations="uint8"`` writes asymmetric uint8 activations (ORT's own
recommendation there; not for TensorRT), measured in ``benchmarks/results/int8``.
Shape arithmetic (TF "same" padding computed in float) and the classifier heads stay fp32.

Calibration respects sharing: the trunk's tensors are calibrated on a seeded mix of every task's
images, each branch's tensors (the nodes that feed only that task's output) on its own task's
images. ORT's calibrators collect the ranges (one pass per task; for entropy / percentile one
more over the whole mix for the trunk); the merged ranges go to ``quantize_static`` through its
``calibration_cache_path``, so the quantizer itself is ORT's, untouched.

The gate runs ``model.onnx`` and the INT8 file on held-out images of each task (never the
calibration images): top-1 agreement and, where the task's labels are known, the accuracy of both.
A task past the thresholds fails the export in one line, or, with ``fallback``, has its branch
nodes excluded from quantization (``nodes_to_exclude``: fp32 branch) and is checked again.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    create_calibrator,
    quantize_static,
)
from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data
from onnxruntime.quantization.shape_inference import quant_pre_process

from subtune_edge.data import DataSpec, load_data
from subtune_edge.docs import documented
from subtune_edge.errors import DataError, ExportError
from subtune_edge.progress import Progress, emit
from subtune_edge.runtime import OrtRunner, preprocess
from subtune_edge.task import Task

from .fp16 import unnamed_nodes
from .inputs import fit_batch, image_files
from .onnx_export import check_onnx, file_bytes, save_onnx, tidy
from .shapes import INPUT_NAME

log = logging.getLogger(__name__)

STAGE = "export"
METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}
QUANTIZER = ("onnxruntime.quantization.quantize_static (QDQ; int8 symmetric activations per tensor, "
             "int8 symmetric per-channel weights) after quant_pre_process")
EXTRA_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True}
#: activation type -> (ORT QuantType, symmetric); weights are always int8 symmetric per channel
ACTIVATIONS = {"int8": (QuantType.QInt8, True), "uint8": (QuantType.QUInt8, False)}
MIN_GATE_IMAGES = 10
SEED = 0
CALIBRATION_BATCH = 16


@documented
@dataclass(frozen=True)
class Int8Options:
    """How :func:`export_int8` calibrates and gates (the ``int8_*`` / ``calibration*`` export options)."""

    calibration: tuple[str, ...] = field(default=(), metadata={
        "help": "calibration data: image folders or data specs (digits:parity); TASK=DATA for one task only; "
                "empty: each task's recorded training data"})
    samples: int = field(default=256, metadata={"help": "calibration images in all, drawn evenly from the tasks"})
    method: str = field(default="minmax", metadata={"help": "calibration method: minmax, entropy or percentile"})
    min_agreement: float = field(default=0.98, metadata={
        "help": "least top-1 agreement of INT8 with fp32 on a task's held-out images"})
    max_drop: float = field(default=0.01, metadata={
        "help": "largest accuracy drop (fp32 - INT8, a fraction: 0.01 = 1 point) on a task's labelled held-out images"})
    fallback: bool = field(default=False, metadata={
        "help": "keep a failing task's branch in fp32 (its nodes excluded from quantization) instead of failing"})
    gate_samples: int = field(default=256, metadata={"help": "held-out images per task the gate runs at most"})
    threads: int | None = field(default=None, metadata={"help": "ONNX Runtime threads for calibration and gate"})
    activations: str = field(default="int8", metadata={
        "help": "int8: symmetric int8 activations (TensorRT's explicit quantization); uint8: asymmetric uint8 "
                "activations, what ONNX Runtime recommends for x86 CPUs (its U8S8 kernels; not for TensorRT)"})


def check_options(opts: Int8Options) -> None:
    """Refuse options that cannot work, before any export work.

    Raises:
        ExportError: an unknown method, a sample count below 8, thresholds outside 0..1.
    """
    if opts.method not in METHODS:
        raise ExportError(f"unknown calibration method '{opts.method}'; pass {{param}} minmax, entropy or percentile",
                          param="calibration_method")
    if opts.activations not in ACTIVATIONS:
        raise ExportError(f"unknown INT8 activation type '{opts.activations}'; pass {{param}} int8 (TensorRT) or "
                          "uint8 (ONNX Runtime on x86 CPUs)", param="int8_activations")
    if int(opts.samples) < 8:
        raise ExportError(f"{opts.samples} calibration images are too few; pass {{param}} of at least 8",
                          param="calibration_samples")
    if not 0.0 <= float(opts.min_agreement) <= 1.0:
        raise ExportError(f"agreement {opts.min_agreement} is not a fraction; pass {{param}} in 0..1 (0.98 = 98%)",
                          param="int8_min_agreement")
    if not 0.0 <= float(opts.max_drop) <= 1.0:
        raise ExportError(f"accuracy drop {opts.max_drop} is not a fraction; pass {{param}} in 0..1 (0.01 = 1 point)",
                          param="int8_max_drop")


# -- images ----------------------------------------------------------------------------------------
@dataclass
class ImagePool:
    """Images of one source, split into a calibration part and a held-out part (with targets if labelled)."""

    source: str
    calibration: list
    held_out: list
    targets: np.ndarray | None = None
    labels: tuple[str, ...] = ()


def _pool(source: str, preprocessing: dict, size: tuple[int, int]) -> ImagePool:
    """A data spec / class folder (train split calibrates, val split holds out) or a flat image folder."""
    path = Path(source)
    try:
        data = load_data(DataSpec(source, input_size=tuple(size)), preprocessing)
    except DataError:
        if not path.exists():
            raise ExportError(f"calibration data '{source}' is neither a folder nor a data spec (digits:TARGET, "
                              "digits-c:..., skimage-textures); check {param}", param="calibration") from None
        files = image_files([path])
        order = np.random.default_rng(SEED).permutation(len(files))
        cut = len(files) - max(1, len(files) // 4)
        return ImagePool(source, [files[i] for i in order[:cut]], [files[i] for i in order[cut:]])
    return ImagePool(source, [data.train.image(i) for i in range(len(data.train))],
                     [data.val.image(i) for i in range(len(data.val))], np.asarray(data.val.targets),
                     tuple(data.labels))


def recorded_source(task: Task) -> str | None:
    """The data source in the task's training record, when it can be rebuilt here (a named spec or a folder)."""
    data = task.training.get("data") if isinstance(task.training, dict) else None
    source = data.get("source") if isinstance(data, dict) else None
    if not isinstance(source, str) or not source:
        return None
    if ":" in source or source.startswith(("digits", "skimage-textures")) or Path(source).is_dir():
        return source
    return None


def _parse_calibration(entries, outs: list[str], tasks_by_output: dict[str, str]) -> tuple[list[str], dict]:
    shared, per_task = [], {}
    by_name = {name: out for out, name in tasks_by_output.items()} | {o: o for o in outs}
    for entry in entries:
        head, sep, rest = str(entry).partition("=")
        if sep and head in by_name:
            per_task.setdefault(by_name[head], []).append(rest)
        else:
            shared.append(str(entry))
    return shared, per_task


@dataclass
class TaskImages:
    """What one task is calibrated and gated on."""

    calibration: np.ndarray
    calibration_sources: list[str]
    held_out: np.ndarray
    targets: np.ndarray | None
    held_out_source: str


def task_images(tasks: list[Task], outs: list[str], opts: Int8Options, preprocessing: dict,
                size: tuple[int, int]) -> dict[str, TaskImages]:
    """Per output: its share of the calibration images and its held-out gate images, preprocessed.

    Raises:
        ExportError: a task without calibration data, too few calibration or held-out images.
    """
    tasks_by_output = dict(zip(outs, (t.name for t in tasks)))
    shared, per_task = _parse_calibration(opts.calibration, outs, tasks_by_output)
    pools: dict[str, ImagePool] = {}

    def pool(src: str) -> ImagePool:
        if src not in pools:
            pools[src] = _pool(src, preprocessing, size)
        return pools[src]

    k = len(tasks)
    n_total = int(opts.samples)
    out: dict[str, TaskImages] = {}
    for i, (task, name) in enumerate(zip(tasks, outs)):
        recorded = recorded_source(task)
        cal_sources = per_task.get(name) or shared or ([recorded] if recorded else [])
        if not cal_sources:
            raise ExportError(f"task '{task.name}' records no training data that can be rebuilt here; pass "
                              "{param} DATA (an image folder or a spec like digits:parity)", param="calibration")
        n = n_total // k + (1 if i < n_total % k else 0)
        candidates = [img for src in cal_sources for img in pool(src).calibration]
        if len(candidates) < n:
            raise ExportError(f"task '{task.name}' has {len(candidates)} calibration images in "
                              f"{', '.join(cal_sources)} but needs {n} ({n_total} over {k} task(s)); add images "
                              "or lower {param}", param="calibration_samples")
        rng = np.random.default_rng(SEED + i)
        chosen = [candidates[j] for j in sorted(rng.choice(len(candidates), n, replace=False))]
        gate_pool = pool(recorded) if recorded else pool(cal_sources[0])
        labelled = gate_pool.targets is not None and tuple(gate_pool.labels) == tuple(task.labels)
        held = gate_pool.held_out
        if len(held) < MIN_GATE_IMAGES:
            raise ExportError(f"task '{task.name}' has {len(held)} held-out images in {gate_pool.source} for the "
                              f"INT8 gate, fewer than {MIN_GATE_IMAGES}; pass {{param}} data with more images",
                              param="calibration")
        idx = np.arange(len(held))
        if len(held) > opts.gate_samples:
            idx = np.sort(np.random.default_rng(SEED + 100 + i).choice(len(held), int(opts.gate_samples),
                                                                       replace=False))
        split = "validation split" if gate_pool.targets is not None else "held out"
        out[name] = TaskImages(
            calibration=preprocess(chosen, preprocessing), calibration_sources=list(cal_sources),
            held_out=preprocess([held[j] for j in idx], preprocessing),
            targets=np.asarray(gate_pool.targets)[idx] if labelled else None,
            held_out_source=f"{gate_pool.source} ({split})")
    return out


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


def quantize(prepared: Path, dst: Path, cache: Path, method: str, exclude: list[str], outputs: list[str],
             activations: str = "int8") -> dict:
    """``quantize_static`` (QDQ, symmetric int8) of ``prepared`` with the ranges in ``cache``; checks ``dst``."""
    act_type, symmetric = ACTIVATIONS[activations]
    quantize_static(str(prepared), str(dst), None, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=act_type, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                    calibrate_method=METHODS[method],
                    extra_options={**EXTRA_OPTIONS, "ActivationSymmetric": symmetric},
                    calibration_cache_path=str(cache))
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
    return {"file": dst.name, "quantizer": QUANTIZER, "bytes": size,
            "quantize_linear": ops.count("QuantizeLinear"), "dequantize_linear": ops.count("DequantizeLinear"),
            "excluded_nodes": len(exclude), "nodes": len(ops)}


# -- the gate ---------------------------------------------------------------------------------------
def _top1(path: Path, arrays: dict[str, np.ndarray], batch, threads) -> dict[str, np.ndarray]:
    """Per output: argmax of that output on that task's own images."""
    lo, hi = batch
    got: dict[str, list] = {name: [] for name in arrays}
    with OrtRunner(path, threads=threads) as runner:
        for name, array in arrays.items():
            n = len(array)
            for chunk in fit_batch(array, (lo, max(lo, min(hi, CALIBRATION_BATCH)))):
                got[name].append(np.asarray(runner.infer({INPUT_NAME: chunk})[name]).argmax(-1))
            got[name] = np.concatenate(got[name])[:n] if got[name] else np.zeros(0, np.int64)
    return got


def _fits(got: np.ndarray, n: int) -> np.ndarray:
    return got[:n]


def gate(fp32: dict[str, np.ndarray], int8: dict[str, np.ndarray], images: dict[str, TaskImages],
         opts: Int8Options) -> dict[str, dict]:
    """Per output: agreement, accuracies, whether it passes the thresholds and why not."""
    results = {}
    for name, imgs in images.items():
        n = len(imgs.held_out)
        a, b = _fits(fp32[name], n), _fits(int8[name], n)
        agreement = float((a == b).mean())
        acc32 = acc8 = None
        if imgs.targets is not None:
            acc32, acc8 = float((a == imgs.targets).mean()), float((b == imgs.targets).mean())
        reasons = []
        if agreement < opts.min_agreement:
            reasons.append(f"top-1 agreement {agreement:.1%} < {opts.min_agreement:.1%}")
        if acc32 is not None and acc32 - acc8 > opts.max_drop + 1e-12:
            reasons.append(f"accuracy {acc32:.1%} -> {acc8:.1%} drops more than {opts.max_drop * 100:g} point(s)")
        results[name] = {"agreement": round(agreement, 6),
                         "accuracy_fp32": None if acc32 is None else round(acc32, 6),
                         "accuracy_int8": None if acc8 is None else round(acc8, 6),
                         "samples": n, "passed": not reasons, "reason": "; ".join(reasons) or None}
    return results


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
        fp32_top1 = _top1(src, {n: i.held_out for n, i in mine.items()}, batch, opts.threads)
        fp32_branch: list[str] = []
        attempts = 0
        while True:
            attempts += 1
            emit(progress, STAGE, f"quantizing {dst.name}" + (f" (fp32 branches: {', '.join(fp32_branch)})"
                                                              if fp32_branch else ""), step="int8-quantize")
            exclude = shape_only + [node for name in fp32_branch for node in branches[name]]
            report = quantize(prepared, dst, cache, opts.method, exclude, outs, opts.activations)
            emit(progress, STAGE, f"gating {dst.name} on held-out images of every task", step="int8-gate")
            results = gate(fp32_top1, _top1(dst, {n: i.held_out for n, i in mine.items()}, batch, opts.threads),
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


def options_from(export_options) -> Int8Options:
    """The :class:`Int8Options` an :class:`~exporters.ExportOptions` asks for."""
    o = export_options
    return Int8Options(calibration=tuple(str(c) for c in (o.calibration or ())), samples=int(o.calibration_samples),
                       method=o.calibration_method, min_agreement=float(o.int8_min_agreement),
                       max_drop=float(o.int8_max_drop), fallback=bool(o.int8_fallback),
                       gate_samples=int(o.int8_gate_samples), activations=str(o.int8_activations))


@dataclass
class Int8Export:
    """The INT8 files of an export: ``onnx`` reports by file, per-output task records, the summary."""

    reports: dict[str, dict]
    tasks: dict[str, dict]
    separate: dict[str, dict]
    summary: dict

    def apply(self, record: dict) -> dict:
        """Add the INT8 fields to a manifest record being built: ``int8`` and each task's ``int8``."""
        for task in record["tasks"]:
            out = task["output"]
            if out in self.tasks:
                task["int8"] = self.tasks[out]
            if out in self.separate:
                task["separate_int8"] = f"separate/{out}.int8.onnx"
        record["int8"] = self.summary
        return record


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
