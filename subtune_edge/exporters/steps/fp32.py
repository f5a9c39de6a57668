"""``model.onnx`` (the fused graph, fp32) and, with ``separate``, ``separate/<output>.onnx`` per task."""

from __future__ import annotations

from subtune_edge.cost import build_fused
from subtune_edge.errors import ExportError
from subtune_edge.multitask import TaskModel

from ..onnx_export import export_onnx
from ..options import ExportOptions
from ..verification import step
from .base import ExportContext, Step

TORCHSCRIPT_OPSETS = (13, 20)


def check(opts: ExportOptions) -> None:
    """The opset the chosen exporter can write."""
    if not opts.dynamo and not TORCHSCRIPT_OPSETS[0] <= opts.opset <= TORCHSCRIPT_OPSETS[1]:
        raise ExportError(f"opset {opts.opset} is outside {TORCHSCRIPT_OPSETS[0]}..{TORCHSCRIPT_OPSETS[1]}, what the "
                          "TorchScript exporter writes; use {param} 17 (or the dynamo exporter for 18 and later)",
                          param="opset")


def layout(opts: ExportOptions) -> str:
    """The branch layout model.onnx is first exported with: the one asked for, plain where a measurement decides."""
    return opts.branches if opts.branches in ("plain", "grouped", "stacked") else "plain"


def run(ctx: ExportContext) -> None:
    kind = layout(ctx.opts)
    with step("plan", ctx.timings, ctx.progress, f"building the fused module ({kind} branches) and its sharing plan"):
        ctx.fused = build_fused(ctx.backbone, ctx.tasks, ctx.size, stacked=kind == "stacked", grouped=kind == "grouped")
    with step("export", ctx.timings, ctx.progress, f"exporting model.onnx ({ctx.exporter})"):
        report = export_onnx(ctx.fused, ctx.staging / "model.onnx", ctx.outs, ctx.size, ctx.range, ctx.opts.opset,
                             ctx.opts.dynamo)
        ctx.reports["model.onnx"] = report.to_json()
        ctx.opset = report.opset
    if not ctx.opts.separate:
        return
    (ctx.staging / "separate").mkdir()
    for task, name in zip(ctx.tasks, ctx.outs):
        with step("separate", ctx.timings, ctx.progress, f"exporting separate/{name}.onnx"):
            rel = f"separate/{name}.onnx"
            model = TaskModel.from_task(ctx.backbone, task)
            ctx.reports[rel] = export_onnx(model, ctx.staging / rel, [name], ctx.size, ctx.range, ctx.opset,
                                           ctx.opts.dynamo).to_json() | {"file": rel}


STEP = Step("fp32", run, check=check)
