"""Every file against the PyTorch task models (ONNX Runtime CPU), then on the ``verify_with`` runtimes."""

from __future__ import annotations

from ..options import ExportOptions
from ..verification import check_verify_with, verify_files, verify_on, verify_ort_format
from .base import ExportContext, Step


def check(opts: ExportOptions) -> None:
    check_verify_with(tuple(opts.verify_with), opts.verify)


def run(ctx: ExportContext) -> None:
    ctx.verification, ctx.checked = verify_files(
        ctx.backbone, ctx.tasks, ctx.outs, ctx.tasks_by_output, ctx.staging, ctx.preprocessing, ctx.size, ctx.range,
        ctx.opts.fp16, ctx.opts.separate, list(ctx.opts.images or []) or None, ctx.timings, ctx.progress)
    for spec in check_verify_with(tuple(ctx.opts.verify_with), True):
        verify_on(spec, ctx.staging, ctx.verification, ctx.checked, ctx.tasks_by_output, ctx.timings, ctx.progress)
    if ctx.info.get("ort_format") is not None:
        verify_ort_format(ctx.staging, ctx.info["ort_format"], ctx.verification, ctx.checked, ctx.tasks_by_output,
                          ctx.timings, ctx.progress)


STEP = Step("verify", run, wanted=lambda opts: opts.verify or bool(opts.verify_with), check=check)
