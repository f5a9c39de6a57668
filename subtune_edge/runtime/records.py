"""Typed records of an export manifest: the input, the batch range, preprocessing, tasks, files.

The manifest is validated whole against ``subtune_edge/schema/manifest.schema.json`` first
(:meth:`~subtune_edge.runtime.manifest.Manifest.from_json`), so each record's ``from_json`` only
builds itself from JSON whose types are known good and checks what spans fields (``opt`` between
``min`` and ``max``, labels one per class); ``to_json`` writes it back. Writers build these records
(:meth:`TaskOutput.for_task` is the one task-record builder of the export and of ``add-task``) and
serialise them, so what is written and what is accepted cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .schema import BATCH_DIM, MANIFEST, fail, safe_relpath


@dataclass(frozen=True)
class FileRecord:
    """One file of the export: its sha256 and size, as recorded at export."""

    sha256: str
    bytes: int

    def to_json(self) -> dict:
        return {"sha256": self.sha256, "bytes": self.bytes}

    @classmethod
    def from_json(cls, rel: Any, data: dict, where: str = MANIFEST) -> FileRecord:
        """One ``files`` entry; its path must stay inside the export folder."""
        safe_relpath(rel, where)
        return cls(data["sha256"], data["bytes"])


@dataclass(frozen=True)
class InputSpec:
    """The graph's one input: name, dtype, layout and shape (``shape[0]`` is ``"batch"`` when dynamic)."""

    name: str
    shape: tuple[int | str, int, int, int]
    dtype: str = "float32"
    layout: str = "NCHW"

    @property
    def hw(self) -> tuple[int, int]:
        """The input's (height, width)."""
        return int(self.shape[2]), int(self.shape[3])

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "layout": self.layout, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: dict, where: str = MANIFEST) -> InputSpec:
        return cls(name=data.get("name", "input"), shape=tuple(data["shape"]), dtype=data.get("dtype", "float32"),
                   layout=data.get("layout", "NCHW"))


@dataclass(frozen=True)
class BatchRange:
    """The batch sizes the files accept; ``opt`` is the one TensorRT tuned for."""

    min: int
    opt: int
    max: int
    dynamic: bool

    @property
    def sizes(self) -> list[int]:
        """The distinct batch sizes it names (min, opt, max): what a layout choice is timed at."""
        return sorted({self.min, self.opt, self.max})

    @property
    def dim(self) -> int | str:
        """The batch dimension as the shapes state it: ``"batch"`` when dynamic, else the fixed size."""
        return BATCH_DIM if self.dynamic else self.min

    def to_json(self) -> dict:
        return {"min": self.min, "opt": self.opt, "max": self.max, "dynamic": self.dynamic}

    @classmethod
    def from_json(cls, data: dict, where: str = MANIFEST) -> BatchRange:
        """``1 <= min <= opt <= max``, ``dynamic`` = ``min != max``."""
        lo, hi = data["min"], data["max"]
        if hi < lo:
            raise fail(where, "batch.max", hi, f"an integer >= min ({lo})")
        opt = data.get("opt", lo)
        if not lo <= opt <= hi:
            raise fail(where, "batch.opt", opt, f"between min {lo} and max {hi}")
        dynamic = data.get("dynamic", lo != hi)
        if dynamic != (lo != hi):
            raise fail(where, "batch.dynamic", dynamic, f"{str(lo != hi).lower()} for batch {lo}..{hi}")
        return cls(lo, opt, hi, dynamic)


@dataclass(frozen=True)
class Preprocessing:
    """timm's evaluation data config, which an app applies to turn an image into the input."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float
    crop_mode: str | None = None

    def to_json(self) -> dict:
        return {"input_size": list(self.input_size), "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "crop_pct": self.crop_pct, "crop_mode": self.crop_mode}

    @classmethod
    def from_json(cls, data: dict, where: str = MANIFEST) -> Preprocessing:
        return cls(input_size=tuple(data["input_size"]), mean=tuple(float(v) for v in data["mean"]),
                   std=tuple(float(v) for v in data["std"]), interpolation=data["interpolation"],
                   crop_pct=float(data["crop_pct"]), crop_mode=data.get("crop_mode"))


@dataclass(frozen=True)
class Int8Figures:
    """A task's INT8 record (``tasks[i].int8``): its branch's precision in ``model.int8.onnx`` and its gate.

    ``agreement`` is the top-1 agreement of INT8 with fp32 on ``samples`` held-out images;
    ``accuracy_fp32`` / ``accuracy_int8`` are null where the held-out images have no labels.
    ``precision`` is ``int8`` (the whole branch quantized), ``fp32`` (the branch kept in fp32) or
    ``mixed`` (some of its layers kept in fp32, listed in ``fp32_nodes``); ``gate`` holds the
    statistical test the task passed or failed.
    """

    precision: str
    agreement: float
    samples: int
    method: str = ""
    calibration: tuple[str, ...] = ()
    calibration_samples: int = 0
    accuracy_fp32: float | None = None
    accuracy_int8: float | None = None
    held_out: str = ""
    passed: bool = True
    reason: str | None = None
    extra: dict = field(default_factory=dict)

    KNOWN = ("precision", "agreement", "accuracy_fp32", "accuracy_int8", "samples", "passed", "reason", "method",
             "calibration", "calibration_samples", "held_out")

    def to_json(self) -> dict:
        return {"precision": self.precision, "agreement": self.agreement, "accuracy_fp32": self.accuracy_fp32,
                "accuracy_int8": self.accuracy_int8, "samples": self.samples, "passed": self.passed,
                "reason": self.reason, "method": self.method, "calibration": list(self.calibration),
                "calibration_samples": self.calibration_samples, "held_out": self.held_out, **self.extra}

    @classmethod
    def from_json(cls, data: dict, where: str = MANIFEST, name: str = "tasks[0].int8") -> Int8Figures:
        return cls(precision=data["precision"], agreement=float(data["agreement"]), samples=data["samples"],
                   method=data.get("method", ""), calibration=tuple(data.get("calibration", [])),
                   calibration_samples=data.get("calibration_samples", 0), accuracy_fp32=data.get("accuracy_fp32"),
                   accuracy_int8=data.get("accuracy_int8"), held_out=data.get("held_out", ""),
                   passed=data.get("passed", True), reason=data.get("reason"),
                   extra={k: v for k, v in data.items() if k not in cls.KNOWN})


@dataclass(frozen=True)
class TaskOutput:
    """One task of the export: its output in the graph, its classes, and how it was trained.

    ``resized_from`` is the (H, W) the task was prepared at when it was exported at another size
    (``allow_resize``); ``None`` when it runs at its own size. ``pruned`` records a task whose
    tuned units were channel-pruned (ratio and the pruned shapes), ``None`` for full-width branches.
    """

    name: str
    output: str
    shape: tuple[int | str, int]
    labels: tuple[str, ...] = ()
    tuned_units: tuple[str, ...] = ()
    siamese: bool = False
    mode: str = ""
    val_accuracy: float | None = None
    separate: str | None = None
    resized_from: tuple[int, int] | None = None
    int8: Int8Figures | None = None
    separate_int8: str | None = None
    pruned: dict | None = None

    @property
    def num_classes(self) -> int:
        return int(self.shape[-1])

    def label(self, k: int) -> str:
        """The name of class ``k`` (its index when the task has no labels)."""
        return self.labels[k] if self.labels else str(k)

    def to_json(self) -> dict:
        out = {"name": self.name, "output": self.output, "shape": list(self.shape), "num_classes": self.num_classes,
               "labels": list(self.labels), "tuned_units": list(self.tuned_units), "siamese": self.siamese,
               "mode": self.mode, "val_accuracy": self.val_accuracy}
        if self.separate is not None:
            out["separate"] = self.separate
        if self.resized_from is not None:
            out["resized_from"] = list(self.resized_from)
        if self.int8 is not None:
            out["int8"] = self.int8.to_json()
        if self.separate_int8 is not None:
            out["separate_int8"] = self.separate_int8
        if self.pruned is not None:
            out["pruned"] = dict(self.pruned)
        return out

    @classmethod
    def for_task(cls, task, output: str, batch_dim: int | str, *, separate: bool = False,
                 resized_from: tuple[int, int] | None = None) -> TaskOutput:
        """The record of a :class:`~subtune_edge.task.Task` exported as ``output`` (the export's and add-task's).

        Args:
            task: the task.
            output: its output name in the graphs.
            batch_dim: the batch dimension of the shapes (``"batch"`` or the fixed size).
            separate: the export holds ``separate/<output>.onnx``.
            resized_from: the (H, W) the task was prepared at, when exported at another size.
        """
        return cls(name=task.name, output=output, shape=(batch_dim, task.num_classes), labels=tuple(task.labels),
                   tuned_units=tuple(task.tuned_units), siamese=task.siamese, mode=task.mode,
                   val_accuracy=task.training.get("val_accuracy"),
                   separate=f"separate/{output}.onnx" if separate else None,
                   resized_from=tuple(resized_from) if resized_from else None,
                   pruned=dict(task.pruned) if task.pruned else None)

    @classmethod
    def from_json(cls, data: dict, where: str = MANIFEST, name: str = "tasks[0]") -> TaskOutput:
        """One ``tasks`` entry (schema-checked); refuses classes and labels that disagree."""
        shape = tuple(data["shape"])
        if "num_classes" in data and data["num_classes"] != shape[1]:
            raise fail(where, f"{name}.num_classes", data["num_classes"], f"shape[1] = {shape[1]}")
        labels = tuple(data["labels"])
        if labels and len(labels) != shape[1]:
            raise fail(where, f"{name}.labels", list(labels), f"empty or {shape[1]} labels (one per class)")
        resized = data.get("resized_from")
        int8 = data.get("int8")
        return cls(name=data["name"], output=data["output"], shape=shape, labels=labels,
                   tuned_units=tuple(data.get("tuned_units", [])), siamese=data.get("siamese", False),
                   mode=data.get("mode", ""), val_accuracy=data.get("val_accuracy"), separate=data.get("separate"),
                   resized_from=None if resized is None else tuple(resized),
                   int8=None if int8 is None else Int8Figures.from_json(int8, where, f"{name}.int8"),
                   separate_int8=data.get("separate_int8"), pruned=data.get("pruned"))
