"""ONNX Runtime's mobile format: the ``.ort`` twin of every fused ONNX file and ``required_operators.config``."""

from __future__ import annotations

from ..ort_format import convert_to_ort
from ..verification import step
from .base import ExportContext, Step


def run(ctx: ExportContext) -> None:
    with step("ort-format", ctx.timings, ctx.progress, "converting to ONNX Runtime's .ort format"):
        ctx.info["ort_format"] = convert_to_ort(ctx.staging)


STEP = Step("ort", run, wanted=lambda opts: opts.ort_format)
