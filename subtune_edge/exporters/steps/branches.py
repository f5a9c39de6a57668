"""``branches="auto"``: where tasks tune the same units, keep whichever branch layout runs faster on the target.

The paper's grouped branches (one wider network for the tasks that tune the same units: fewer,
larger kernels) pay where kernel launches dominate, on GPUs; on a CPU runtime they are often slower
than the plain fused graph (``benchmarks/results/branches``). So an export with groupable tasks
writes the grouped graph too, checks that it computes the same outputs as ``model.onnx`` (fp32
tolerance, ONNX Runtime CPU), times both on ``opts.runtime`` with the benchmark's protocol (rounds
alternated, after warm-up) at each batch size the export names (min, opt, max), and keeps as
``model.onnx`` the layout whose worst slowdown over those batches is least: grouped branches that win
by a few percent at batch 1 can lose by 1.8x at batch 8, and one file serves the whole range. The
manifest's ``branches`` record says what was chosen, from which timings. With a
bench results file (``bench EXPORT --variants plain,grouped`` run on the target device) the choice
is taken from it instead of measured here.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from subtune_edge.cost import build_fused
from subtune_edge.errors import ExportError
from subtune_edge.multitask.grouped import grouping_key
from subtune_edge.runtime import OrtRunner, get_runtime
from subtune_edge.runtime.compare import FP32, compare_outputs
from subtune_edge.runtime.timing import Budget, least_worst_slowdown, measure_files, summarize

from ..inputs import seeded_batch
from ..onnx_export import export_onnx
from ..options import ExportOptions
from ..shapes import INPUT_NAME
from ..verification import step
from .base import ExportContext, Step

#: how long the choice may take: a few seconds of alternated rounds per batch size timed
BUDGET = Budget(warmup=2, min_runs=10, max_runs=400, seconds=2.0)


def check(opts: ExportOptions) -> None:
    """The runtime the choice is timed on must run ONNX files here (refused before any work)."""
    if opts.branches != "auto":
        choice_from_results(opts.branches)
        return
    spec = get_runtime(opts.runtime)
    if spec.consumes != "onnx":
        raise ExportError(f"{spec.name} does not run .onnx files; pass {{param}} a runtime that does to time the "
                          "branch layouts on", param="runtime")
    spec.require()


def groups(ctx: ExportContext) -> list[list[str]]:
    """The outputs of tasks that would share a grouped branch (two or more tuning the same units)."""
    by_key: dict[tuple, list[str]] = {}
    for task, out in zip(ctx.tasks, ctx.outs):
        key = grouping_key(task)
        if key is not None:
            by_key.setdefault(key, []).append(out)
    return [members for members in by_key.values() if len(members) > 1]


def choice_from_results(path: str) -> dict:
    """The layout a ``bench --variants plain,grouped`` run chose, with the figures it chose from.

    Raises:
        ExportError: the file is not such a run.
    """
    file = Path(path) / "results.json" if Path(path).is_dir() else Path(path)
    try:
        data = json.loads(file.read_text())
        variants = data["variants"]
        return {"chosen": variants["chosen"], "from": str(file), **{k: v for k, v in variants.items()
                                                                   if k != "chosen"}}
    except (OSError, ValueError, KeyError, TypeError):
        raise ExportError(f"{file} is not the results of `subtune-edge bench EXPORT --variants plain,grouped`; run "
                          "that on the target device and pass its results", param="branches") from None


def _time(spec, plain: Path, grouped: Path, batch: int, size, threads) -> tuple[float, float, int]:
    x = np.random.default_rng(0).standard_normal((batch, 3, *size)).astype(np.float32)
    files = {"plain": plain, "grouped": grouped}
    got = measure_files({v: spec.runner(f, threads=threads) for v, f in files.items()}, {INPUT_NAME: x}, BUDGET)
    median = {v: summarize(samples, batch).median_ms for v, samples in got.items()}
    return median["plain"], median["grouped"], len(got["plain"])


def _choose(ctx: ExportContext, grouped: Path) -> dict:
    """Time both layouts at each batch size of the export's range; keep the least worst slowdown."""
    spec = get_runtime(ctx.opts.runtime)
    batches = sorted(set(ctx.batch))
    timed, medians = [], {}
    with step("branches", ctx.timings, ctx.progress, f"timing plain against grouped branches on {spec.name} "
                                                     f"(batch {', '.join(map(str, batches))})"):
        for batch in batches:
            plain_ms, grouped_ms, rounds = _time(spec, ctx.staging / "model.onnx", grouped, batch, ctx.size,
                                                 ctx.opts.threads)
            medians[batch] = {"plain": plain_ms, "grouped": grouped_ms}
            timed.append({"batch": batch, "plain_ms": round(plain_ms, 4), "grouped_ms": round(grouped_ms, 4),
                          "grouped_over_plain": round(grouped_ms / plain_ms, 4), "rounds": rounds})
    chosen, worst = least_worst_slowdown(medians)
    return {"chosen": chosen, "runtime": spec.name, "threads": ctx.opts.threads,
            "rule": "least worst slowdown over the timed batches", "timed": timed,
            "worst_slowdown": {k: round(v, 4) for k, v in worst.items()}}


def run(ctx: ExportContext) -> None:
    mode = "auto" if ctx.opts.branches == "auto" else "results"
    found = groups(ctx)
    if not found or not ctx.backbone.family_record.groupable:
        reason = ("no two tasks tune the same units" if not found else
                  f"{ctx.backbone.family} branches are not grouped")
        ctx.info["branches"] = {"mode": mode, "chosen": "plain", "reason": reason}
        return
    with tempfile.TemporaryDirectory(prefix=".branches-", dir=ctx.staging.parent) as tmp:
        candidate = Path(tmp) / "grouped.onnx"
        with step("branches", ctx.timings, ctx.progress, "exporting the grouped branches to compare"):
            grouped = build_fused(ctx.backbone, ctx.tasks, ctx.size, grouped=True, strict=False)
            report = export_onnx(grouped, candidate, ctx.outs, ctx.size, ctx.range, ctx.opset, ctx.opts.dynamo)
            x = seeded_batch(min(max(2, ctx.range[0]), ctx.range[1]), ctx.size)
            with OrtRunner(ctx.staging / "model.onnx") as a, OrtRunner(candidate) as b:
                results = compare_outputs(a.infer({INPUT_NAME: x}), b.infer({INPUT_NAME: x}), FP32)
            bad = [r for r in results if not r.passed]
            if bad:
                raise ExportError(f"the grouped branches do not compute what the plain ones do ({bad[0].output}: "
                                  f"{bad[0].reason}); report this, or pass {{param}} plain", param="branches")
        if mode == "results":
            record = choice_from_results(ctx.opts.branches)
        else:
            record = _choose(ctx, candidate)
        if record["chosen"] == "grouped":
            shutil.move(str(candidate), ctx.staging / "model.onnx")
            ctx.fused = grouped
            ctx.reports["model.onnx"] = report.to_json() | {"file": "model.onnx"}
    ctx.info["branches"] = {"mode": mode, **record, "groups": found,
                            "outputs_max_rel_diff": max(float(r.max_rel) for r in results)}


STEP = Step("branches", run, wanted=lambda opts: opts.branches not in ("plain", "grouped", "stacked"), check=check)
