"""Entry points: benchmark an existing export, or a suite that builds its own."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from . import environment
from .harness import BenchConfig, Harness, ProgressFn
from .report import SCHEMA, write_report
from .suites import Suite, build_suite_tasks


def run_bench(export_dir: str | Path, config: BenchConfig, *, tasks=None, backbone=None,
              progress: ProgressFn | None = None, title: str | None = None, suite: dict | None = None) -> dict:
    """Measure fused vs separate for k = 1..N on every configured backend; returns results.json's content."""
    harness = Harness(export_dir, config, tasks=tasks, backbone=backbone, progress=progress)
    measured = harness.run()
    manifest = harness.manifest
    return {
        "schema": SCHEMA,
        "title": title or f"{manifest['backbone']['model_name']}, {len(harness.outputs)} tasks",
        "suite": suite,
        "environment": environment.describe(),
        "settings": config.to_json(),
        "export": {"dir": str(Path(export_dir)), "backbone": manifest["backbone"]["model_name"],
                   "input_size": manifest["preprocessing"]["input_size"], "tasks": harness.task_names,
                   "plan_ideal_ratio_flops": (manifest.get("plan", {}).get("cost") or {}).get("ideal_ratio_flops")},
        "rows": measured["rows"],
        "skipped": measured["skipped"],
    }


def run_suite(suite: Suite, results_dir: str | Path, *, backends: list[str] | None = None,
              batch_sizes: list[int] | None = None, progress: ProgressFn | None = None) -> tuple[dict, dict]:
    """Build the suite's export (synthetic tasks), measure it, write the report into ``results_dir``."""
    from exporters import export_tasks

    config = dataclasses.replace(suite.config, backends=backends or suite.config.backends,
                                 batch_sizes=batch_sizes or suite.config.batch_sizes)
    results_dir = Path(results_dir)
    export_dir = results_dir / "export"
    if progress:
        progress(f"exporting {suite.backbone} with {len(suite.tasks)} tasks", 0, 1)
    backbone, tasks = build_suite_tasks(suite)
    export_tasks(tasks, export_dir, weights=suite.weights, opset=suite.opset, input_size=suite.input_size,
                 batch=(1, max(config.batch_sizes)), separate=True, fp16=suite.fp16, trt=suite.trt)
    suite_json = {"name": suite.name, "description": suite.description,
                  "tasks": [dataclasses.asdict(t) for t in suite.tasks]}
    results = run_bench(export_dir, config, tasks=tasks, backbone=backbone, progress=progress,
                        title=f"suite {suite.name}: {suite.description}", suite=suite_json)
    paths = write_report(results, results_dir)
    return results, paths
