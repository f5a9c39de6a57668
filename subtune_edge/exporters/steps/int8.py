"""``model.int8.onnx`` (and ``separate/<output>.int8.onnx``): calibrated INT8 QDQ, every task gated against fp32."""

from __future__ import annotations

from dataclasses import replace

from subtune_edge.errors import ExportError

from .. import int8 as int8_mod
from ..options import ExportOptions
from ..verification import step
from .base import ExportContext, Step


def check(opts: ExportOptions) -> None:
    int8_mod.check_options(opts.int8)
    targets = int8_mod.resolve_targets(opts.int8, trt=opts.trt is not None)
    if opts.trt is not None and "trt" not in targets:
        raise ExportError(f"--trt builds its plan from the INT8 file for TensorRT, but {{param}} is "
                          f"{opts.int8.target}; add trt to it (or drop --trt)", param="int8_target")
    if "trt" in targets and opts.int8.activations not in (None, "int8"):
        raise ExportError("TensorRT's explicit quantization needs symmetric int8 activations; pass {param} int8 "
                          "with trt", param="int8_activations")


def run(ctx: ExportContext) -> None:
    targets = int8_mod.resolve_targets(ctx.opts.int8, trt=ctx.opts.trt is not None)
    opts = replace(ctx.opts.int8, target=targets[0])
    with step("int8", ctx.timings, ctx.progress, f"quantizing to model.int8.onnx for {', '.join(targets)} "
                                                 "(one calibration, per-task gate)"):
        ctx.int8 = int8_mod.export_all(ctx.staging, ctx.tasks, ctx.outs, ctx.preprocessing, ctx.size, ctx.range,
                                       opts, ctx.opts.separate, ctx.progress, targets, ctx.fused.plan.trunk_units)
        ctx.reports.update(ctx.int8.reports)
        ctx.info["int8"] = ctx.int8.summary


STEP = Step("int8", run, wanted=lambda opts: opts.int8 is not None, check=check)
