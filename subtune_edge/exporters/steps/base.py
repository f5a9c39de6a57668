"""What every export step shares: the :class:`ExportContext` being built and the :class:`Step` record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from subtune_edge.backbone import Backbone
from subtune_edge.progress import Progress
from subtune_edge.task import Task

from ..options import ExportOptions


@dataclass
class ExportContext:
    """The export as it is built: the inputs, then what each step adds for the ones after it.

    Attributes:
        tasks: the tasks, in output order.
        outs: their output names.
        opts: the options.
        staging: the hidden folder the export is built in (published whole when every step is done).
        progress: the caller's progress callback.
        backbone: the frozen backbone (set by the pipeline before the steps).
        size: the input (H, W).
        preprocessing: the export's preprocessing record.
        batch: the (min, opt, max) batch range.
        opset: the ONNX opset written (the dynamo exporter may raise it).
        exporter: ``torchscript`` or ``dynamo``.
        fused: the module ``model.onnx`` was exported from (plain, grouped or stacked branches).
        reports: per file, what its writer reported (the manifest's ``onnx``).
        verification: the verification record; ``checked`` holds the references and inputs it used.
        info: the manifest sections steps add (``modular``, ``ort_format``, ``tensorrt``, ``int8``, ``branches``).
        int8: what the INT8 step made (per-task records for the manifest's tasks).
        timings: seconds per step.
    """

    tasks: list[Task]
    outs: list[str]
    opts: ExportOptions
    staging: Path
    progress: Progress | None = None
    backbone: Backbone | None = None
    size: tuple[int, int] = (0, 0)
    preprocessing: dict = field(default_factory=dict)
    batch: tuple[int, int, int] = (1, 1, 1)
    opset: int = 17
    exporter: str = "torchscript"
    fused: nn.Module | None = None
    reports: dict[str, dict] = field(default_factory=dict)
    verification: dict = field(default_factory=lambda: {"passed": None, "skipped": "--no-verify"})
    checked: tuple | None = None
    info: dict = field(default_factory=dict)
    int8: object | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def tasks_by_output(self) -> dict[str, str]:
        return dict(zip(self.outs, (t.name for t in self.tasks)))

    @property
    def range(self) -> tuple[int, int]:
        """The (min, max) batch."""
        return self.batch[0], self.batch[2]


@dataclass(frozen=True)
class Step:
    """One step of an export: whether the options ask for it, what it refuses before any work, what it does.

    Attributes:
        name: the step's name (``fp32``, ``int8``, ...), as timings and progress events call it.
        run: ``run(ctx)``: writes its files into ``ctx.staging`` and records what later steps need.
        wanted: ``wanted(opts)``: whether this export runs the step.
        check: ``check(opts)``: raises, before any export work, for options the step cannot honour
            (a missing TensorRT, an unknown runtime); runs only when the step is wanted.
    """

    name: str
    run: Callable[[ExportContext], None]
    wanted: Callable[[ExportOptions], bool] = lambda opts: True
    check: Callable[[ExportOptions], None] | None = None
