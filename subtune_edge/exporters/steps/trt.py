"""``model.plan``: the TensorRT engine (10.x with precision flags, 11.x strongly typed), verified where it can run."""

from __future__ import annotations

import dataclasses

from .. import tensorrt as trt_mod
from ..options import ExportOptions
from ..verification import step, verify_plan
from .base import ExportContext, Step


def check(opts: ExportOptions) -> None:
    trt_mod.require_tensorrt()  # before any other work: a missing TensorRT should cost nothing


def run(ctx: ExportContext) -> None:
    opts = ctx.opts.trt
    with step("tensorrt", ctx.timings, ctx.progress, "building model.plan with TensorRT"):
        recipe = trt_mod.build_recipe(trt_mod.tensorrt_version() or "0", ctx.opts.fp16, int8=ctx.opts.int8 is not None)
        if recipe.precision == "int8":  # the plan reads the INT8 file written for TensorRT (symmetric activations)
            recipe = dataclasses.replace(recipe, onnx_file=ctx.info["int8"]["targets"]["trt"]["file"])
        shapes = trt_mod.profile_shapes(ctx.batch, ctx.size)
        record = trt_mod.build_engine(ctx.staging, recipe, shapes, workspace=opts.workspace,
                                      timing_cache=opts.timing_cache)
    if recipe.precision == "int8":  # INT8 logits are not within TF32 of PyTorch: model.int8.onnx was gated
        record["verification"] = {"passed": None, "skipped": "an INT8 engine: its source model.int8.onnx passed the "
                                                             "per-task INT8 gate"}
    elif ctx.checked is not None:
        record["verification"] = verify_plan(ctx.staging, recipe, ctx.tasks_by_output, ctx.verification, ctx.checked,
                                             ctx.timings, ctx.progress)
    ctx.info["tensorrt"] = record


STEP = Step("trt", run, wanted=lambda opts: opts.trt is not None, check=check)
