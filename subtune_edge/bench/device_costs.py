"""Device cost table: what a task's branch adds on the target device, for each branch point.

A task that tunes a unit set S leaves the shared trunk at its first tuned unit i and re-runs units
i..L-1 on its own; its added latency depends on i (and the head), not on which of those units
it tuned. So one measurement per unit answers "what would a task branching here cost on this
Jetson", and greedy selection can use the table anywhere (it records where it was measured).

Each unit i is measured as the fused graph runs it: a graph holding a linear-probe task (the
whole frozen trunk) plus one task branching at i, against the same graph pruned to the probe
alone, alternated in one process on the same input; added = L(with branch) - L(trunk only).
With ``prune_ratios``, each unit is measured again for each ratio with its branch's first unit
channel-pruned (a row with ``ratio``): what pruning that unit saves, measured, for
:meth:`~subtune_edge.search.LatencyTable.saving`.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from subtune_edge.backbone import create_backbone, model_args_for_input
from subtune_edge.cost import branch_flops, branch_units, unit_costs
from subtune_edge.errors import PruneError, SubtuneError
from subtune_edge.exporters import export_onnx
from subtune_edge.multitask import MultiTaskModel
from subtune_edge.progress import Progress, emit
from subtune_edge.prune import PruneConfig, check_ratio
from subtune_edge.runtime import make_runner, parse_backend, require
from subtune_edge.runtime.timing import summarize
from subtune_edge.schema import validate
from subtune_edge.search.latency import COSTS_FORMAT as FORMAT
from subtune_edge.search.latency import COSTS_SCHEMA, read_cost_table
from subtune_edge.synthetic import synthetic_task

from . import environment
from .harness import Budget, measure_pair, prune_outputs

FORMAT_VERSION = 1
HEAD_CLASSES = 10


def _runners(backend: str, backbone, trunk, module: MultiTaskModel, size: tuple[int, int], batch: int,
             threads: int | None, work: Path, tag: str):
    """(with-branch runner, trunk-only runner) for one branch point."""
    outputs = ["trunk", "branch"]
    if parse_backend(backend)[0].consumes == "onnx":
        full = work / f"{tag}.onnx"
        export_onnx(module, full, outputs, size, (batch, batch))
        base = prune_outputs(full, ["trunk"], work / f"{tag}_trunk.onnx")
        return make_runner(backend, full, threads=threads), make_runner(backend, base, threads=threads)
    base_module = MultiTaskModel(backbone, [trunk])
    return (make_runner(backend, module=module, output_names=outputs, threads=threads),
            make_runner(backend, module=base_module, output_names=["trunk"], threads=threads))


def measure_device_costs(model_name: str, *, backend: str = "ort-cpu", batch: int = 1,
                         input_size: tuple[int, int] | None = None, weights: str = "random",
                         threads: int | None = None, budget: Budget | None = None, units: list[str] | None = None,
                         prune_ratios: tuple[float, ...] = (), progress: Progress | None = None) -> dict:
    """Measure the added latency of a branch at every unit of ``model_name`` on ``backend``.

    Args:
        model_name: a timm model name.
        backend: where to measure (``ort-cpu``, ``ort-cuda``, ``ort-trt``, ``torch-cpu``, ``torch-cuda``).
        batch: the batch size to measure at.
        input_size: (H, W); default the model's pretrained config.
        weights: the weights to build the graphs with (latency does not depend on their values).
        threads: intra-op threads (recorded).
        budget: when each unit's measurement stops.
        units: only these units; default all.
        prune_ratios: also measure each unit's branch with that unit pruned at these ratios (rows
            with ``ratio``; a unit nothing of which can be pruned alone gets none).
        progress: receives an :class:`~subtune_edge.progress.Event` (stage ``"profile-device"``) per unit.

    Returns:
        The cost table (``subtune-edge.costs`` format): one row per unit with its added latency,
        branch FLOPs and bytes, and where it was measured.

    Raises:
        SubtuneError: the backend cannot run here, bad settings, or an unknown model or unit.
    """
    require(backend)
    ratios = [check_ratio(r, "prune_ratios") for r in prune_ratios]
    if not (isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1):
        raise SubtuneError(f"{{param}} must be a positive integer, got {batch!r}", param="batch")
    budget = (budget or Budget(warmup=2, min_runs=10, max_runs=100, seconds=2.0)).check()
    backbone = create_backbone(model_name, weights, **model_args_for_input(model_name, input_size))
    size = tuple(input_size or backbone.data_config["input_size"][1:])
    names = units or backbone.unit_names
    table = {c.name: c for c in unit_costs(backbone, size)}
    flops = {name: c.flops for name, c in table.items()}
    trunk = synthetic_task(backbone, "trunk", [], HEAD_CLASSES, seed=0, input_size=size)
    x = np.random.default_rng(0).standard_normal((batch, 3, *size)).astype(np.float32)
    rows = []
    steps = len(names) * (1 + len(ratios))
    with tempfile.TemporaryDirectory(prefix="device-costs-") as tmp:
        for i, unit in enumerate(names):
            for j, ratio in enumerate([0.0, *ratios]):
                done = i * (1 + len(ratios)) + j
                emit(progress, "profile-device", f"{backend}: branch at {unit}" + (f", pruned {ratio:g}" if ratio
                                                                                    else ""), done, steps, unit=unit)
                try:
                    branch = synthetic_task(backbone, "branch", [unit], HEAD_CLASSES, seed=i + 1, input_size=size,
                                            prune=PruneConfig(ratio) if ratio else None)
                except PruneError:
                    continue  # nothing in this unit can be narrowed alone: pruning saves nothing here
                module = MultiTaskModel(backbone, [trunk, branch])
                with_branch, trunk_only = _runners(backend, backbone, trunk, module, size, batch, threads, Path(tmp),
                                                   f"u{i}_{j}")
                try:
                    for r in (with_branch, trunk_only):
                        r.stage({"input": x})
                    a, b = measure_pair([with_branch], [trunk_only], budget)
                finally:
                    with_branch.deactivate()
                    trunk_only.deactivate()
                tail = branch_units(backbone.unit_names, [unit])
                start = len(backbone.unit_names) - len(tail)
                fa, fb = summarize(a, batch), summarize(b, batch)
                row = {
                    "unit": unit, "index": start,
                    "added_ms": fa.median_ms - fb.median_ms,
                    "added_ms_p90": fa.p90_ms - fb.median_ms,
                    "with_branch_ms": fa.median_ms, "trunk_only_ms": fb.median_ms,
                    "branch_flops": branch_flops(flops, backbone.unit_names, [unit])
                    + 2 * backbone.num_features * HEAD_CLASSES,
                    "unit_bytes": table[unit].bytes, "unit_params": table[unit].params,
                    "bytes_if_tail_tuned": sum(table[u].bytes for u in tail),
                }
                if ratio:
                    row.update(ratio=ratio, branch_flops=row["branch_flops"] - branch.pruned["flops"]["before"]
                               + branch.pruned["flops"]["after"],
                               unit_bytes=sum(t.numel() * t.element_size() for k, t in branch.tensors.items()
                                              if not k.startswith("head.")))
                rows.append(row)
    emit(progress, "profile-device", "done", steps, steps)
    return _checked({
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model": model_name, "weights": weights, "input_size": list(size), "batch": batch, "backend": backend,
        "threads": threads, "budget": asdict(budget), "head_classes": HEAD_CLASSES, "prune_ratios": ratios,
        "environment": environment.describe(),
        "units": rows,
    })


def _checked(table: dict) -> dict:
    """The table, refused if its own reader would refuse it (``device-costs.schema.json``)."""
    validate(table, COSTS_SCHEMA, "cost table being written")
    return table


def is_cost_table(path: str | Path) -> bool:
    """Whether ``path`` is a file this module wrote, so that a new measurement may replace it.

    Args:
        path: a file.

    Returns:
        True for a JSON object whose ``format`` is the device cost table's.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


read_costs = read_cost_table
"""Read a cost table written by :func:`measure_device_costs` (the reader lives with its users, in core)."""
