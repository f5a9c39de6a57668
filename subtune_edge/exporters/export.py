"""``export_tasks``: tasks -> a verified export directory, written atomically, as a list of steps.

Everything is built in a hidden sibling folder of ``out`` (:func:`subtune_edge.io.staged_dir`)
and published only after every file was written, checked and verified; on any error the folder
is removed, so ``out`` holds either the previous export or the new one, never half of one. An
existing ``out`` is replaced only when :func:`subtune_edge.runtime.is_export_dir` recognises it
as an earlier export holding nothing else: a user's folder is refused before any work.

The work itself is :data:`~.steps.STEPS`: every wanted step is checked first (options that cannot
work, a runtime that is missing), then each runs on one :class:`~.steps.ExportContext`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from subtune_edge.backbone.padding import freeze_same_padding
from subtune_edge.errors import ExportError
from subtune_edge.io import staged_dir
from subtune_edge.multitask import weights_for_tasks
from subtune_edge.progress import Progress
from subtune_edge.runtime import is_export_dir
from subtune_edge.runtime.manifest import Manifest
from subtune_edge.task import Task

from .inputs import image_files
from .options import OPTION_NAMES, ExportOptions
from .shapes import check_batch, output_names
from .steps import STEPS, ExportContext
from .task_input import input_size_for, load_backbone, preprocessing_for
from .verification import step

__all__ = ["OPTION_NAMES", "ExportOptions", "export_tasks"]


def export_tasks(tasks: list[Task], out: str | Path, options: ExportOptions | None = None, *,
                 progress: Progress | None = None, **overrides) -> Manifest:
    """Export ``tasks`` as one fused, verified ONNX graph (+ optional files) into ``out``.

    The folder is built beside ``out`` and published only when every file is written, every
    output verified against the PyTorch task models and the manifest sealed (see
    ``exporters/FORMAT.md``). An existing ``out`` is replaced only when it is an earlier export
    and holds nothing else; any other non-empty folder is refused before any work.

    Args:
        tasks: the tasks, in output order; they must share one backbone and its frozen weights.
        out: the export folder to write (or replace).
        options: how to export (:class:`ExportOptions`); its fields may also be given as keywords,
            which override it: ``export_tasks(tasks, "out", separate=True, batch=(1, 8), int8=True)``
            (nested INT8 / TensorRT fields flat too: ``int8_fallback=True``; see :meth:`ExportOptions.build`).
        progress: called with a :class:`~subtune_edge.progress.Event` (stage ``"export"``) per step.
        **overrides: :class:`ExportOptions` fields and their flat forms.

    Returns:
        The written, sealed :class:`~subtune_edge.runtime.Manifest` (``.to_json()`` is ``manifest.json``).

    Raises:
        ExportError: ``out`` may not be replaced, options that cannot work, tasks that cannot be
            fused, or an output past its verification tolerance (nothing is written then).
        TaskFileError: tasks of different backbones or frozen weights.
        WeightsError: the tasks were trained on a weights file and ``weights`` does not name it again.
        RuntimeMissingError: ``trt`` without TensorRT, a ``verify_with`` or ``runtime`` that is not
            installed (checked before any work).
        TypeError: a keyword that is no export option.
    """
    opts = ExportOptions.build(options, **overrides)
    start = time.perf_counter()
    if opts.images:
        image_files(list(opts.images))  # a missing or unreadable image is refused before any work, verified or not
    steps = [s for s in STEPS if s.wanted(opts)]
    for s in steps:
        if s.check is not None:
            s.check(opts)
    lo, opt, hi = check_batch(tuple(opts.batch))
    tasks = list(tasks)
    outs = output_names([t.name for t in tasks])
    weights = weights_for_tasks(tasks, opts.weights)  # a weights file named in a task file is never opened
    # absolute and normalised: '.' or 'a/..' must name the folder itself, not an empty name beside it
    dest = Path(os.path.abspath(out))
    with staged_dir(dest, owns=is_export_dir, what="an export", param="out") as staging:
        ctx = ExportContext(tasks, outs, opts, staging, progress, batch=(lo, opt, hi), opset=opts.opset,
                            exporter="dynamo" if opts.dynamo else "torchscript")
        with step("load", ctx.timings, progress, "loading the backbone and checking the tasks"):
            ctx.backbone = load_backbone(tasks, weights)
            ctx.size = input_size_for(tasks, ctx.backbone, opts.input_size, opts.allow_resize)
            ctx.preprocessing = preprocessing_for(tasks, ctx.backbone, ctx.size)
            freeze_same_padding(ctx.backbone.model, ctx.size)  # the export's H x W is fixed: so is "same" padding
        for s in steps:
            if s.name == "manifest":
                ctx.timings["total"] = round(time.perf_counter() - start, 3)
            s.run(ctx)
    manifest = ctx.info.get("manifest")
    if manifest is None:  # pragma: no cover - the manifest step always runs
        raise ExportError("the export wrote no manifest; report this")
    return manifest
