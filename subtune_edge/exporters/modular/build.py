"""A modular export written into a staged export (:func:`export_modular`) and verified (:func:`verify_modular`)."""

from __future__ import annotations

from pathlib import Path

from subtune_edge.backbone import Backbone
from subtune_edge.progress import Progress, emit
from subtune_edge.runtime.compare import FP32
from subtune_edge.runtime.modular import ModularRunner
from subtune_edge.runtime.modular_layout import TRUNK_FILE, ModularLayout, branch_file
from subtune_edge.task import Task

from ..shapes import INPUT_NAME
from ..verification import check_runner, raise_failures
from .graphs import export_branch, export_trunk, layout_record
from .modules import branch_taps

STAGE = "export"
MODULAR_FILE = "trunk.onnx+branches"  # how verification results name the modular path


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
