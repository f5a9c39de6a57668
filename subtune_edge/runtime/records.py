"""Typed records of an export manifest: the input, the batch range, preprocessing, tasks, files.

Each parses and checks its own part of ``manifest.json`` (``from_json``) and writes it back
(``to_json``); :class:`~subtune_edge.runtime.manifest.Manifest` assembles them and checks what
spans several parts (the input size against preprocessing, the batch dimension everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .schema import BATCH_DIM, CROP_MODES, HEX64, INTERPOLATIONS, MANIFEST, FieldCheck, batch_dim, safe_relpath


@dataclass(frozen=True)
class FileRecord:
    """One file of the export: its sha256 and size, as recorded at export."""

    sha256: str
    bytes: int

    def to_json(self) -> dict:
        return {"sha256": self.sha256, "bytes": self.bytes}

    @classmethod
    def from_json(cls, rel: Any, data: Any, where: str = MANIFEST) -> FileRecord:
        """Check one ``files`` entry: a path inside the folder, a sha256 hex digest, a size."""
        c = FieldCheck(where)
        safe_relpath(rel, where)
        data = c.obj(data, f"files.{rel}")
        digest = c.key(data, "sha256", f"files.{rel}.sha256")
        if not isinstance(digest, str) or not HEX64.match(digest):
            raise c.fail(f"files.{rel}.sha256", "a sha256 hex digest", digest)
        return cls(digest, c.integer(c.key(data, "bytes", f"files.{rel}.bytes"), f"files.{rel}.bytes", 0))


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
    def from_json(cls, data: Any, where: str = MANIFEST) -> InputSpec:
        """Check ``input``: ``[batch, 3, H, W]`` float32 NCHW."""
        c = FieldCheck(where)
        data = c.obj(data, "input")
        shape = c.sized(c.key(data, "shape", "input.shape"), "input.shape", 4, "[batch, 3, H, W]", channels_at=1)
        return cls(name=c.string(data.get("name", "input"), "input.name"),
                   shape=(batch_dim(c, shape[0], "input.shape[0]"), 3, c.integer(shape[2], "input.shape[2]", 1),
                          c.integer(shape[3], "input.shape[3]", 1)),
                   dtype=c.choice(data.get("dtype", "float32"), "input.dtype", ("float32",)),
                   layout=c.choice(data.get("layout", "NCHW"), "input.layout", ("NCHW",)))


@dataclass(frozen=True)
class BatchRange:
    """The batch sizes the files accept; ``opt`` is the one TensorRT tuned for."""

    min: int
    opt: int
    max: int
    dynamic: bool

    @property
    def dim(self) -> int | str:
        """The batch dimension as the shapes state it: ``"batch"`` when dynamic, else the fixed size."""
        return BATCH_DIM if self.dynamic else self.min

    def to_json(self) -> dict:
        return {"min": self.min, "opt": self.opt, "max": self.max, "dynamic": self.dynamic}

    @classmethod
    def from_json(cls, data: Any, where: str = MANIFEST) -> BatchRange:
        """Check ``batch``: ``1 <= min <= opt <= max``, ``dynamic`` = ``min != max``."""
        c = FieldCheck(where)
        data = c.obj(data, "batch")
        lo = c.integer(c.key(data, "min", "batch.min"), "batch.min", 1)
        hi = c.integer(c.key(data, "max", "batch.max"), "batch.max", lo)
        opt = c.integer(data.get("opt", lo), "batch.opt", lo)
        if opt > hi:
            raise c.fail("batch.opt", f"between min {lo} and max {hi}", opt)
        dynamic = c.boolean(data.get("dynamic", lo != hi), "batch.dynamic")
        if dynamic != (lo != hi):
            raise c.fail("batch.dynamic", f"{str(lo != hi).lower()} for batch {lo}..{hi}", dynamic)
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
    def from_json(cls, data: Any, where: str = MANIFEST) -> Preprocessing:
        """Check ``preprocessing``: size ``[3, H, W]``, 3 means, 3 positive stds, known resize and crop."""
        c = FieldCheck(where)
        data = c.obj(data, "preprocessing")
        size = c.sized(c.key(data, "input_size", "preprocessing.input_size"), "preprocessing.input_size", 3,
                       "[3, H, W]", channels_at=0)
        stats = {}
        for key in ("mean", "std"):
            value = c.sized(c.key(data, key, f"preprocessing.{key}"), f"preprocessing.{key}", 3,
                            "a list of 3 numbers (one per channel)")
            stats[key] = tuple(c.number(v, f"preprocessing.{key}", positive=key == "std") for v in value)
        crop_mode = data.get("crop_mode")
        return cls(
            input_size=(3, c.integer(size[1], "preprocessing.input_size[1]", 1),
                        c.integer(size[2], "preprocessing.input_size[2]", 1)),
            mean=stats["mean"], std=stats["std"],
            interpolation=c.choice(c.key(data, "interpolation", "preprocessing.interpolation"),
                                   "preprocessing.interpolation", INTERPOLATIONS),
            crop_pct=c.number(c.key(data, "crop_pct", "preprocessing.crop_pct"), "preprocessing.crop_pct",
                              positive=True),
            crop_mode=None if crop_mode is None else c.choice(crop_mode, "preprocessing.crop_mode", CROP_MODES))


@dataclass(frozen=True)
class Int8Figures:
    """A task's INT8 record (``tasks[i].int8``): its branch's precision in ``model.int8.onnx`` and its gate.

    ``agreement`` is the top-1 agreement of INT8 with fp32 on ``samples`` held-out images;
    ``accuracy_fp32`` / ``accuracy_int8`` are null where the held-out images have no labels.
    """

    precision: str
    agreement: float
    samples: int
    method: str
    calibration: tuple[str, ...] = ()
    calibration_samples: int = 0
    accuracy_fp32: float | None = None
    accuracy_int8: float | None = None
    held_out: str = ""
    passed: bool = True
    reason: str | None = None

    def to_json(self) -> dict:
        return {"precision": self.precision, "agreement": self.agreement, "accuracy_fp32": self.accuracy_fp32,
                "accuracy_int8": self.accuracy_int8, "samples": self.samples, "passed": self.passed,
                "reason": self.reason, "method": self.method, "calibration": list(self.calibration),
                "calibration_samples": self.calibration_samples, "held_out": self.held_out}

    @classmethod
    def from_json(cls, data: Any, where: str = MANIFEST, name: str = "tasks[0].int8") -> Int8Figures:
        """Check a task's ``int8`` entry; raises ExportError naming the field."""
        c = FieldCheck(where)
        data = c.obj(data, name)

        def maybe(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else c.number(value, f"{name}.{key}")

        reason = data.get("reason")
        return cls(
            precision=c.choice(c.key(data, "precision", f"{name}.precision"), f"{name}.precision", ("int8", "fp32")),
            agreement=c.number(c.key(data, "agreement", f"{name}.agreement"), f"{name}.agreement"),
            samples=c.integer(c.key(data, "samples", f"{name}.samples"), f"{name}.samples", 0),
            method=c.string(data.get("method", ""), f"{name}.method", nonempty=False),
            calibration=c.strings(data.get("calibration", []), f"{name}.calibration"),
            calibration_samples=c.integer(data.get("calibration_samples", 0), f"{name}.calibration_samples", 0),
            accuracy_fp32=maybe("accuracy_fp32"), accuracy_int8=maybe("accuracy_int8"),
            held_out=c.string(data.get("held_out", ""), f"{name}.held_out", nonempty=False),
            passed=c.boolean(data.get("passed", True), f"{name}.passed"),
            reason=None if reason is None else c.string(reason, f"{name}.reason", nonempty=False))


@dataclass(frozen=True)
class TaskOutput:
    """One task of the export: its output in the graph, its classes, and how it was trained.

    ``resized_from`` is the (H, W) the task was prepared at when it was exported at another size
    (``allow_resize``); ``None`` when it runs at its own size.
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
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = MANIFEST, name: str = "tasks[0]") -> TaskOutput:
        """Check one ``tasks`` entry; raises ExportError naming the field."""
        c = FieldCheck(where)
        data = c.obj(data, name)
        shape = c.sized(c.key(data, "shape", f"{name}.shape"), f"{name}.shape", 2, "[batch, num_classes]")
        shape_t = (batch_dim(c, shape[0], f"{name}.shape[0]"), c.integer(shape[1], f"{name}.shape[1]", 1))
        if "num_classes" in data and c.integer(data["num_classes"], f"{name}.num_classes", 1) != shape_t[1]:
            raise c.fail(f"{name}.num_classes", f"shape[1] = {shape_t[1]}", data["num_classes"])
        labels = c.strings(c.key(data, "labels", f"{name}.labels"), f"{name}.labels")
        if labels and len(labels) != shape_t[1]:
            raise c.fail(f"{name}.labels", f"empty or {shape_t[1]} labels (one per class)", len(labels))
        acc = data.get("val_accuracy")
        resized = data.get("resized_from")
        if resized is not None:
            resized = c.sized(resized, f"{name}.resized_from", 2, "[H, W]")
            resized = (c.integer(resized[0], f"{name}.resized_from[0]", 1),
                       c.integer(resized[1], f"{name}.resized_from[1]", 1))
        separate = data.get("separate")
        return cls(
            name=c.string(c.key(data, "name", f"{name}.name"), f"{name}.name"),
            output=c.string(c.key(data, "output", f"{name}.output"), f"{name}.output"),
            shape=shape_t, labels=labels,
            tuned_units=c.strings(data.get("tuned_units", []), f"{name}.tuned_units"),
            siamese=c.boolean(data.get("siamese", False), f"{name}.siamese"),
            mode=c.string(data.get("mode", ""), f"{name}.mode", nonempty=False),
            val_accuracy=None if acc is None else c.number(acc, f"{name}.val_accuracy"),
            separate=None if separate is None else c.string(separate, f"{name}.separate"),
            resized_from=resized,
            int8=None if data.get("int8") is None else Int8Figures.from_json(data["int8"], where, f"{name}.int8"),
            separate_int8=None if data.get("separate_int8") is None
            else c.string(data["separate_int8"], f"{name}.separate_int8"),
        )


