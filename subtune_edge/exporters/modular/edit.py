"""Changing a published modular export in place, atomically and verified: :func:`add_tasks`, :func:`remove_tasks`."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from subtune_edge.errors import ExportError, TaskFileError
from subtune_edge.io import staged_dir
from subtune_edge.multitask import BranchPlan, SharingPlan, trunk_end, weights_for_tasks
from subtune_edge.progress import Progress, emit
from subtune_edge.runtime import OrtRunner, is_export_dir, read_manifest
from subtune_edge.runtime.compare import FP32
from subtune_edge.runtime.manifest import Manifest, TaskOutput
from subtune_edge.runtime.modular import ModularRunner
from subtune_edge.runtime.modular_layout import TRUNK_FILE, ModularLayout, branch_file
from subtune_edge.task import Task

from .. import manifest as manifest_mod
from ..inputs import verification_batches
from ..onnx_export import file_bytes
from ..shapes import INPUT_NAME, output_names
from ..task_input import load_backbone
from ..verification import check_runner, raise_failures, reference_outputs
from .build import MODULAR_FILE, STAGE, verify_modular
from .compose import compose_fused
from .graphs import export_branch, export_trunk, layout_record, weight_hashes
from .modules import branch_taps, ordered_taps, tap_depth

#: files an add-task makes stale and removes (their graphs lack the new task); re-export to get them back
STALE_ON_ADD = ("model.fp16.onnx", "model.plan", "model.int8.onnx", "model.ort", "model.fp16.ort", "model.int8.ort",
                "required_operators.config")


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


def _updated_manifest(manifest: Manifest, staging: Path, tasks: list[TaskOutput], record: dict, reports: dict,
                      results: list[dict], change: dict, removed_files: list[str], unit_names: list[str]) -> Manifest:
    """The manifest after an add / remove: tasks, modular section, plan, ONNX reports, verification, sizes."""
    info = dict(manifest.info)
    info["modular"] = record
    info["plan"] = _plan_json(manifest, unit_names, [t.to_json() for t in tasks])
    info["stacked_branches"] = False
    info["grouped_branches"] = None
    info["branches"] = {"mode": "plain", "chosen": "plain", "reason": "rebuilt from trunk and branches"}
    onnx_reports = {k: v for k, v in (info.get("onnx") or {}).items()
                    if k not in removed_files and (staging / k).exists()}
    info["onnx"] = {**onnx_reports, **reports}
    if "model.plan" in removed_files:
        info["tensorrt"] = None
    if "model.int8.onnx" in removed_files:
        info.pop("int8", None)
    if "model.ort" in removed_files:
        info.pop("ort_format", None)
    keep = {t.name for t in tasks}
    old = info.get("verification") or {}
    old_results = [r for r in old.get("results", []) if r.get("task") in keep
                   and r.get("file") not in ("model.onnx", MODULAR_FILE, *removed_files)]
    info["verification"] = {**{k: v for k, v in old.items() if k not in ("passed", "skipped")}, "passed": True,
                            "results": old_results + results}
    info["verification"].setdefault("tolerance", FP32.rel)
    sizes = dict(info.get("sizes") or {})
    sizes["fused_bytes"] = file_bytes(staging / "model.onnx")[0]
    sizes["modular_bytes"] = sum(file_bytes(staging / f)[0] for f in
                                 [TRUNK_FILE, *(b["file"] for b in record["branches"])])
    if any(t.separate is None for t in tasks):
        sizes.pop("ratio", None)
    info["sizes"] = sizes
    info["changes"] = [*(info.get("changes") or []), {"at": manifest_mod.now(), **change}]
    info["versions"] = manifest_mod.versions()
    return replace(manifest, tasks=tuple(tasks), info=info, files={}, manifest_sha256=None)


def add_tasks(export: str | os.PathLike, tasks: list[Task], *, weights: str | None = None,
              progress: Progress | None = None) -> Manifest:
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
        The new, sealed :class:`~subtune_edge.runtime.Manifest`.

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
        backbone = load_backbone(tasks, weights, size)
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
        records = [replace(t, separate=None if t.separate in removed else t.separate,
                           separate_int8=None if t.separate_int8 in removed else t.separate_int8,
                           int8=None if "model.int8.onnx" in removed else t.int8) for t in kept]
        records += [TaskOutput.for_task(t, o, manifest.batch.dim) for t, o in zip(tasks, new_outs)]
        change = {"added": new_names, "removed": [], "removed_files": removed, "trunk_version": version}
        data = _updated_manifest(manifest, staging, records, record, reports, results, change, removed, names)
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


def remove_tasks(export: str | os.PathLike, names: Sequence[str], *, progress: Progress | None = None) -> Manifest:
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
        The new, sealed :class:`~subtune_edge.runtime.Manifest`.

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
        data = _updated_manifest(manifest, staging, list(kept), record, reports, results, change, removed, names_all)
        emit(progress, STAGE, "hashing files and writing manifest.json", step="manifest")
        return manifest_mod.write_manifest(staging, data)
