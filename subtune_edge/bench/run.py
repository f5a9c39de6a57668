"""Entry points: benchmark an existing export, or a suite that builds its own."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from subtune_edge.exporters import export_tasks
from subtune_edge.io import staged_dir
from subtune_edge.multitask import backbone_for_tasks, weights_for_tasks
from subtune_edge.progress import Progress, emit
from subtune_edge.runtime import read_manifest
from subtune_edge.task import load_tasks

from . import environment
from .harness import BenchConfig, Harness
from .report import SCHEMA, SUITE_EXPORT, WHAT, is_results_dir, write_files
from .suites import Suite, build_suite_tasks


def load_bench_tasks(export_dir: str | Path, task_dir: str | Path, weights: str | None = None):
    """The task objects and backbone an export was made from, for the torch backends.

    Args:
        export_dir: the export (its manifest names the tasks and the weights).
        task_dir: the folder holding the tasks' ``.safetensors`` files.
        weights: the weights source for the frozen trunk; default: the tasks' own when it is the
            timm hub, ``random`` or ``offline`` (a weights file named in a task or a manifest is
            never opened unless passed here).

    Returns:
        ``(tasks, backbone)``, tasks in the manifest's order.

    Raises:
        SubtuneError: the export or a task file is missing or invalid, or the tasks do not share
            the export's backbone and weights.
    """
    manifest = read_manifest(Path(export_dir), verify_files=False)  # the bench itself re-checks every file
    tasks = load_tasks(manifest.task_names, task_dir)
    return tasks, backbone_for_tasks(tasks, weights_for_tasks(tasks, weights))


def run_bench(export_dir: str | Path, config: BenchConfig, *, tasks=None, backbone=None,
              progress: Progress | None = None, title: str | None = None, suite: dict | None = None,
              memory_probe: bool = True) -> dict:
    """Measure fused vs separate for k = 1..N on every configured backend.

    Args:
        export_dir: an export made with ``separate=True``; its files are checked against the
            manifest's sha256 first (a tampered export is refused, never measured).
        config: backends, batch sizes, budget.
        tasks: the export's task objects (manifest order), needed only by the torch backends.
        backbone: the backbone they share.
        progress: receives an :class:`~subtune_edge.progress.Event` per measurement point.
        title: the report's title; default backbone and task count.
        suite: the suite's description, recorded when a suite runs.
        memory_probe: measure each side's resident memory in a fresh process (cleaner figures, a process
            per point); off, RSS growth is measured in this process.

    Returns:
        The content of results.json (valid per ``subtune_edge/schema/bench-results.schema.json``).

    Raises:
        SubtuneError: bad settings, or an export that is missing, invalid or tampered with.
    """
    harness = Harness(export_dir, config, tasks=tasks, backbone=backbone, progress=progress,
                      memory_probe=memory_probe)
    measured = harness.run()
    manifest = harness.manifest
    model_name = manifest.backbone.get("model_name")
    return {
        "schema": SCHEMA,
        "title": title or f"{model_name}, {len(harness.outputs)} tasks",
        "suite": suite,
        "environment": environment.describe(),
        "settings": config.to_json(),
        "export": {"dir": str(Path(export_dir)), "backbone": model_name,
                   "input_size": list(manifest.preprocessing.input_size), "tasks": harness.task_names,
                   "plan_ideal_ratio_flops": harness.plan.cost.ideal_ratio_flops
                   if harness.plan and harness.plan.cost else None},
        "rows": measured["rows"],
        "skipped": measured["skipped"],
    }


def run_suite(suite: Suite, results_dir: str | Path, *, backends: list[str] | None = None,
              batch_sizes: list[int] | None = None, progress: Progress | None = None) -> tuple[dict, dict]:
    """Build the suite's export (synthetic tasks), measure it, write the report into ``results_dir``.

    The export and the report are built in a hidden folder beside ``results_dir`` and replace it
    only when complete; ``results_dir`` must be new, empty, or an earlier bench's results.

    Args:
        suite: a loaded suite (:func:`~subtune_edge.bench.suites.load_suite`).
        results_dir: the folder for ``export/``, results.json, report.md and the plots.
        backends: override the suite's backends.
        batch_sizes: override the suite's batch sizes.
        progress: receives an :class:`~subtune_edge.progress.Event` per step.

    Returns:
        ``(results, paths)``: results.json's content and the written files by kind.

    Raises:
        SubtuneError: ``results_dir`` holds something else, bad settings, or the export failed.
    """
    config = dataclasses.replace(suite.config, backends=backends or suite.config.backends,
                                 batch_sizes=batch_sizes or suite.config.batch_sizes).check()
    results_dir = Path(results_dir)
    with staged_dir(results_dir, owns=is_results_dir, what=WHAT, param="results_dir") as stage:
        emit(progress, "bench", f"exporting {suite.backbone} with {len(suite.tasks)} tasks", 0, 1)
        backbone, tasks = build_suite_tasks(suite)
        export_tasks(tasks, stage / SUITE_EXPORT, weights=backbone.spec.weights, opset=suite.opset,
                     input_size=suite.input_size, batch=(1, max(config.batch_sizes)), separate=True,
                     fp16=suite.fp16, trt=suite.trt, progress=progress)
        suite_json = {"name": suite.name, "description": suite.description,
                      "tasks": [dataclasses.asdict(t) for t in suite.tasks], "bn_init": suite.bn_init}
        results = run_bench(stage / SUITE_EXPORT, config, tasks=tasks, backbone=backbone, progress=progress,
                            title=f"suite {suite.name}: {suite.description}", suite=suite_json)
        results["export"]["dir"] = str(results_dir / SUITE_EXPORT)  # where it is once published
        names = write_files(results, stage)
    return results, {kind: results_dir / name for kind, name in names.items()}
