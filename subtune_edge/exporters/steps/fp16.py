"""``model.fp16.onnx``: fp16 weights and compute, float32 input and outputs (onnxconverter-common)."""

from __future__ import annotations

from ..fp16 import convert_fp16
from ..verification import step
from .base import ExportContext, Step


def run(ctx: ExportContext) -> None:
    with step("fp16", ctx.timings, ctx.progress, "converting to model.fp16.onnx"):
        ctx.reports["model.fp16.onnx"] = convert_fp16(ctx.staging / "model.onnx", ctx.staging / "model.fp16.onnx",
                                                      ctx.outs)


STEP = Step("fp16", run, wanted=lambda opts: opts.fp16)
