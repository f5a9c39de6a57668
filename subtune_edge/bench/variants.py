"""``bench EXPORT --variants plain,grouped``: which branch layout to ship, measured on the target.

``export --branches auto`` decides by timing both layouts on the machine that exports; where that
is not the device the export will run on (a workstation exporting for a Jetson), this measures the
layouts there: each is exported again from the task files (the same tasks, weights and batch range
as the export's manifest, no verification: the export was verified), then the fused graphs are timed
round-robin in one process at each batch size on the chosen backend. The layout whose worst slowdown
against the fastest, over those batch sizes, is least is ``variants.chosen`` in results.json, which
``export --branches RESULTS`` then takes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from subtune_edge.errors import SubtuneError
from subtune_edge.exporters import BRANCHES, export_tasks
from subtune_edge.progress import Progress, emit
from subtune_edge.runtime import make_runner, parse_backend, read_manifest
from subtune_edge.runtime.timing import least_worst_slowdown, measure_files, summarize

from . import environment
from .report import SCHEMA
from .settings import BenchConfig

LAYOUTS = tuple(b for b in BRANCHES if b != "auto")


def bench_variants(export_dir: str | Path, tasks, variants: list[str], config: BenchConfig,
                   progress: Progress | None = None) -> dict:
    """Time the branch layouts ``variants`` of an export's tasks on ``config.backends[0]``.

    Args:
        export_dir: the export (its manifest gives the batch range and weights).
        tasks: its task objects (``load_bench_tasks``).
        variants: layouts to compare: plain, grouped, stacked.
        config: backend, batch sizes, threads and the time budget per point.
        progress: receives an Event (stage ``bench``) per step.

    Returns:
        results.json's content: no fused/separate rows, ``variants`` with a point per (batch, layout).

    Raises:
        SubtuneError: an unknown layout, fewer than two, or a backend that does not run .onnx files.
    """
    config = config.check()
    unknown = [v for v in variants if v not in LAYOUTS]
    if unknown or len(set(variants)) < 2:
        raise SubtuneError(f"{{param}} takes two or more of {', '.join(LAYOUTS)}, got {','.join(variants)}",
                           param="variants")
    spec, _ = parse_backend(config.backends[0])
    if spec.consumes != "onnx":
        raise SubtuneError(f"{spec.name} does not run .onnx files; pass a {{param}} that does", param="backends")
    spec.require()
    manifest = read_manifest(export_dir, verify_files=False)
    lo, hi = manifest.batch.min, manifest.batch.max
    size = manifest.input.hw
    points = []
    with tempfile.TemporaryDirectory(prefix="subtune-variants-") as tmp:
        files = {}
        for v in variants:
            emit(progress, "bench", f"exporting the {v} layout", 0, 1)
            export_tasks(tasks, Path(tmp) / v, weights=manifest.backbone.get("weights"), batch=(lo, hi), verify=False,
                         branches=v, input_size=size, allow_resize=True)
            files[v] = Path(tmp) / v / "model.onnx"
        for i, batch in enumerate(config.batch_sizes):
            emit(progress, "bench", f"{', '.join(variants)} at batch {batch}", i, len(config.batch_sizes))
            x = np.random.default_rng(config.seed).standard_normal((batch, 3, *size)).astype(np.float32)
            got = measure_files({v: make_runner(spec.name, f, threads=config.threads) for v, f in files.items()},
                                {"input": x}, config.budget)
            for v, samples in got.items():
                points.append({"batch": batch, "variant": v, **summarize(samples, batch).to_json()})
    medians: dict[int, dict[str, float]] = {}
    for p in sorted(points, key=lambda p: LAYOUTS.index(p["variant"])):  # ties go to the simpler layout
        medians.setdefault(p["batch"], {})[p["variant"]] = p["median_ms"]
    chosen, worst = least_worst_slowdown(medians)
    return {"schema": SCHEMA, "title": f"branch layouts of {manifest.backbone['model_name']}, "
                                       f"{len(manifest.tasks)} tasks, on {spec.name}",
            "suite": None, "environment": environment.describe(), "settings": config.to_json(),
            "export": {"dir": str(Path(export_dir)), "backbone": manifest.backbone["model_name"],
                       "input_size": list(manifest.preprocessing.input_size), "tasks": manifest.task_names},
            "rows": [], "skipped": [],
            "variants": {"backend": spec.name, "chosen": chosen, "batches": list(config.batch_sizes),
                         "rule": "least worst slowdown over the batches", "worst_slowdown": worst,
                         "points": points}}
