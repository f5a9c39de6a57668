"""``trunk.onnx`` (one output per branch point) and ``branches/<output>.onnx``, verified when the export is."""

from __future__ import annotations

from ..modular import export_modular
from ..verification import step
from .base import ExportContext, Step


def run(ctx: ExportContext) -> None:
    with step("modular", ctx.timings, ctx.progress, "exporting trunk.onnx and branches/"):
        refs, batches = ctx.checked if ctx.checked is not None else (None, None)
        record, reports, results = export_modular(ctx.backbone, ctx.tasks, ctx.outs, ctx.staging, ctx.size,
                                                  ctx.range, ctx.opset, refs, batches, ctx.tasks_by_output,
                                                  ctx.progress)
        ctx.reports.update(reports)
        ctx.info["modular"] = record
        if results:
            ctx.verification["results"] += results


STEP = Step("modular", run, wanted=lambda opts: opts.modular)
