"""What the tasks of one export agree on: the backbone, the input size, the preprocessing."""

from __future__ import annotations

import logging

from timm.layers import set_layer_config

from subtune_edge.backbone import Backbone
from subtune_edge.backbone.padding import freeze_same_padding
from subtune_edge.errors import ExportError
from subtune_edge.multitask import backbone_for_tasks
from subtune_edge.task import Task

log = logging.getLogger(__name__)

PREPROCESSING_KEYS = ("mean", "std", "interpolation", "crop_pct", "crop_mode")


def task_size(task: Task, model_size: tuple[int, int]) -> tuple[int, int]:
    """The (H, W) a task was prepared at (the backbone's own when the task records none)."""
    size = task.preprocessing.get("input_size")
    return tuple(int(v) for v in size[-2:]) if size else model_size


def input_size_for(tasks: list[Task], backbone: Backbone, input_size: tuple[int, int] | None,
                   allow_resize: bool) -> tuple[int, int]:
    """The export's (H, W): ``input_size`` or the one size every task was prepared at.

    Raises:
        ExportError: tasks at several sizes without ``input_size``, a size below 8, a ViT off its grid,
            a task at another size without ``allow_resize``.
    """
    model_size = tuple(int(v) for v in backbone.data_config["input_size"][1:])
    sizes: dict[tuple[int, int], str] = {}
    for t in tasks:
        sizes.setdefault(task_size(t, model_size), t.name)
    if input_size is None:
        if len(sizes) > 1:
            (a, ta), (b, tb) = list(sizes.items())[:2]
            raise ExportError(f"task '{tb}' was prepared at {b[0]}x{b[1]} but '{ta}' at {a[0]}x{a[1]}; "
                              "pass {param} H,W (and allow resizing)", param="input_size")
        input_size = next(iter(sizes))
    h, w = (int(v) for v in input_size)
    if min(h, w) < 8:
        raise ExportError(f"input size {h}x{w} is too small; pass {{param}} H,W of at least 8", param="input_size")
    if backbone.family_record.fixed_input_size and (h, w) != model_size:
        raise ExportError(f"'{backbone.name}' was built for {model_size[0]}x{model_size[1]} inputs (its patch grid "
                          f"is fixed); export at that size, not {h}x{w}")
    others = {size: name for size, name in sizes.items() if size != (h, w)}
    if others and not allow_resize:
        (a, ta), = list(others.items())[:1]
        raise ExportError(f"task '{ta}' was prepared at {a[0]}x{a[1]}, not {h}x{w}; its accuracy at another size is "
                          "unknown: export at its size, or pass {param} to resize anyway", param="allow_resize")
    if others:
        log.warning("exporting at %dx%d tasks prepared at other sizes: %s", h, w,
                    ", ".join(f"{n} ({s[0]}x{s[1]})" for s, n in others.items()))
    return h, w


def preprocessing_for(tasks: list[Task], backbone: Backbone, size: tuple[int, int]) -> dict:
    """The one preprocessing record of the export's input; every task must use the same.

    Raises:
        ExportError: a task whose mean, std, interpolation or crop differs from the first task's.
    """
    base = {**backbone.data_config, **tasks[0].preprocessing}
    for t in tasks[1:]:
        mine = {**backbone.data_config, **t.preprocessing}
        diff = [k for k in PREPROCESSING_KEYS if _norm(mine.get(k)) != _norm(base.get(k))]
        if diff:
            raise ExportError(f"task '{t.name}' uses other preprocessing than '{tasks[0].name}' ({diff[0]}: "
                              f"{mine.get(diff[0])} != {base.get(diff[0])}); one input needs one preprocessing")
    out = {k: _norm(base.get(k)) for k in PREPROCESSING_KEYS}
    return {"input_size": [3, int(size[0]), int(size[1])], **out}


def _norm(value):
    if isinstance(value, (tuple, list)):
        return [round(float(v), 6) for v in value]
    if isinstance(value, float):
        return round(value, 6)
    return value


def load_backbone(tasks: list[Task], weights: str, input_size: tuple[int, int] | None = None) -> Backbone:
    """The tasks' backbone, created as timm's onnx_export.py creates models (``exportable=True``); with
    ``input_size``, TensorFlow "same" padding is frozen for that size (:func:`~subtune_edge.backbone.padding.
    freeze_same_padding`: no shape arithmetic in the graph, int8 convolutions that fuse)."""
    with set_layer_config(scriptable=False, exportable=True, no_jit=True):
        backbone = backbone_for_tasks(tasks, weights)
    if input_size is not None:
        freeze_same_padding(backbone.model, tuple(input_size))
    return backbone
