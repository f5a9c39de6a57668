"""``manifest.json``: the typed Manifest of everything the steps wrote, hashed and sealed."""

from __future__ import annotations

from subtune_edge.multitask import StackedMultiTaskModel
from subtune_edge.multitask.grouped import GroupedMultiTaskModel
from subtune_edge.progress import emit
from subtune_edge.runtime.manifest import BatchRange, InputSpec, Manifest, Preprocessing, TaskOutput

from .. import manifest as manifest_mod
from ..shapes import BATCH_DIM, INPUT_NAME
from ..task_input import task_size
from ..verification import STAGE
from .base import ExportContext, Step


def _grouped_record(ctx: ExportContext) -> dict | None:
    """Which tasks run as one grouped branch (None when model.onnx has plain or stacked branches)."""
    fused = ctx.fused
    if not isinstance(fused, GroupedMultiTaskModel):
        return None
    return {"groups": [[ctx.outs[j] for j in members] for members in fused.groups],
            "starts": [fused.plan.branches[members[0]].start_unit for members in fused.groups]}


def build(ctx: ExportContext) -> Manifest:
    """The manifest record of the staged export (``files`` filled in and sealed when it is written)."""
    lo, opt, hi = ctx.batch
    dim = BATCH_DIM if lo != hi else lo
    model_size = tuple(int(v) for v in ctx.backbone.data_config["input_size"][1:])
    tasks = []
    for t, out in zip(ctx.tasks, ctx.outs):
        own = task_size(t, model_size)
        tasks.append(TaskOutput.for_task(t, out, dim, separate=ctx.opts.separate,
                                         resized_from=own if own != tuple(ctx.size) else None))
    if ctx.int8 is not None:
        tasks = ctx.int8.apply(tasks)
    sizes = {"fused_bytes": ctx.reports["model.onnx"]["bytes"]}
    if ctx.opts.separate:
        sizes["separate_bytes"] = sum(r["bytes"] for f, r in ctx.reports.items()
                                      if f.startswith("separate/") and not f.endswith(".int8.onnx"))
        sizes["ratio"] = round(sizes["fused_bytes"] / sizes["separate_bytes"], 4)
    info = {"created": manifest_mod.now(), "exporter": ctx.exporter,
            "stacked_branches": isinstance(ctx.fused, StackedMultiTaskModel), "grouped_branches": _grouped_record(ctx),
            "branches": ctx.info.get("branches", {"mode": ctx.opts.branches, "chosen": ctx.opts.branches}),
            "onnx": ctx.reports, "sizes": sizes, "plan": ctx.fused.plan.to_json(), "verification": ctx.verification,
            "tensorrt": ctx.info.get("tensorrt"), "timings_s": ctx.timings, "versions": manifest_mod.versions()}
    for key in ("modular", "ort_format", "int8"):
        if ctx.info.get(key) is not None:
            info[key] = ctx.info[key]
    backbone = ctx.backbone
    return Manifest(backbone={**backbone.spec.to_json(), "family": backbone.family,
                              "fingerprint": backbone.fingerprint},
                    input=InputSpec(INPUT_NAME, (dim, 3, int(ctx.size[0]), int(ctx.size[1]))),
                    batch=BatchRange(lo, opt, hi, lo != hi), preprocessing=Preprocessing.from_json(ctx.preprocessing),
                    tasks=tuple(tasks), opset=ctx.opset, files={}, info=info)


def run(ctx: ExportContext) -> None:
    emit(ctx.progress, STAGE, "hashing files and writing manifest.json", step="manifest")
    ctx.info["manifest"] = manifest_mod.write_manifest(ctx.staging, build(ctx))


STEP = Step("manifest", run)
