"""Use an export from Python: ``load_export(DIR)`` -> a model that takes images or arrays.

This is what users check an export with before they embed it, and the reference the C++ runner
is compared against, so it does exactly what ``exporters/FORMAT.md`` tells an app to do:
timm's evaluation transform for the manifest's data config (resize the shorter side to
``floor(H / crop_pct)``, center-crop, scale to [0, 1], normalize), NCHW float32, then one run of
the fused graph, whose outputs come back by task name::

    model = subtune_edge.load_export("out")
    logits = model(["cat.jpg", "dog.jpg"])          # {"digit": array[2, 10], "parity": ...}
    model.predict(["cat.jpg"], topk=3)              # [{"digit": [("3", 0.91), ...], ...}]

The graph runs on ONNX Runtime (CUDA provider when onnxruntime-gpu sees a GPU, else CPU), or on
the TensorRT plan with ``device="tensorrt"``, through :mod:`subtune_edge.runners`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ExportError

if TYPE_CHECKING:
    from PIL import Image

TRANSFORM_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
DEVICES = ("auto", "cpu", "cuda", "tensorrt")


# -- preprocessing --------------------------------------------------------------------------------
def eval_transform(preprocessing: dict):
    """timm's evaluation transform (PIL image -> CHW float tensor) for a recorded data config."""
    from timm.data import create_transform

    cfg = {k: preprocessing[k] for k in TRANSFORM_KEYS if preprocessing.get(k) is not None}
    cfg["input_size"] = tuple(int(v) for v in cfg["input_size"])
    for key in ("mean", "std"):
        if key in cfg:
            cfg[key] = tuple(float(v) for v in cfg[key])
    return create_transform(**cfg, is_training=False)


def load_image(image) -> Image.Image:
    """A path, PIL image or HWC / HW uint8 array as an RGB PIL image."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ExportError(f"an image array must be HxW or HxWxC uint8, got {image.dtype} {image.shape}; "
                              "pass preprocessed NCHW float32 batches to run() instead")
        return Image.fromarray(image).convert("RGB")
    path = Path(os.fspath(image))
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise ExportError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ExportError(f"cannot read image {path} ({exc.__class__.__name__}); is it an image file?") from exc


def preprocess(images: Sequence, preprocessing: dict) -> np.ndarray:
    """Images (paths, PIL images or uint8 arrays) -> the model's NCHW float32 input."""
    transform = eval_transform(preprocessing)
    return np.stack([transform(load_image(img)).numpy() for img in images]).astype(np.float32, copy=False)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# -- the loaded export ----------------------------------------------------------------------------
@dataclass
class TaskInfo:
    name: str
    output: str
    labels: list[str]
    num_classes: int

    def label(self, k: int) -> str:
        return self.labels[k] if self.labels else str(k)


class ExportedModel:
    """An export directory loaded for inference; a context manager that releases the session."""

    def __init__(self, path: Path, manifest: dict, runner, file: str):
        self.path, self.manifest, self.runner, self.file = path, manifest, runner, file
        self.tasks = [TaskInfo(t["name"], t["output"], list(t.get("labels") or []), int(t["shape"][-1]))
                      for t in manifest["tasks"]]
        self.preprocessing = dict(manifest["preprocessing"])
        self.input_name = manifest["input"].get("name", "input")
        self.batch_min, self.batch_max = int(manifest["batch"]["min"]), int(manifest["batch"]["max"])
        self.input_hw = tuple(int(v) for v in manifest["input"]["shape"][2:])
        self._transform = None

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def __enter__(self) -> ExportedModel:
        self.runner.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.runner.deactivate()

    def preprocess(self, images: Sequence) -> np.ndarray:
        return preprocess(images, self.preprocessing)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """An NCHW float32 batch of any size -> {task name: logits}; split / padded to the batch range."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1] != 3 or tuple(batch.shape[2:]) != self.input_hw:
            raise ExportError(f"input of shape {batch.shape} does not fit this export's "
                              f"[N, 3, {self.input_hw[0]}, {self.input_hw[1]}]")
        n = len(batch)
        if n == 0:
            return {t.name: np.zeros((0, t.num_classes), np.float32) for t in self.tasks}
        parts: dict[str, list[np.ndarray]] = {t.name: [] for t in self.tasks}
        for start in range(0, n, self.batch_max):
            chunk = batch[start:start + self.batch_max]
            size = len(chunk)
            if size < self.batch_min:  # a fixed-batch export: pad with copies, trim afterwards
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_min - size, axis=0)])
            out = self.runner.infer({self.input_name: np.ascontiguousarray(chunk)})
            for t in self.tasks:
                parts[t.name].append(np.asarray(out[t.output], dtype=np.float32)[:size])
        return {name: np.concatenate(chunks) for name, chunks in parts.items()}

    def __call__(self, inputs) -> dict[str, np.ndarray]:
        """Images (paths, PIL images, HxWxC uint8 arrays, or a list of them; an NxHxWxC uint8 batch) or a
        preprocessed NCHW float32 batch -> {task name: logits}."""
        if isinstance(inputs, np.ndarray) and inputs.ndim == 4:
            # float NCHW: already preprocessed; uint8 NHWC: a batch of decoded images
            return self.run(inputs) if inputs.dtype != np.uint8 else self.run(self.preprocess(list(inputs)))
        if isinstance(inputs, (str, os.PathLike)) or not isinstance(inputs, Sequence):
            inputs = [inputs]
        return self.run(self.preprocess(inputs))

    def predict(self, inputs, topk: int = 5) -> list[dict[str, list[tuple[str, float]]]]:
        """Per image, per task: the top-k (label, softmax score) pairs, best first."""
        logits = self(inputs)
        n = len(next(iter(logits.values())))
        results: list[dict[str, list[tuple[str, float]]]] = [{} for _ in range(n)]
        for t in self.tasks:
            probs = softmax(logits[t.name].astype(np.float64))
            k = max(1, min(topk, t.num_classes))
            order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
            for i in range(n):
                results[i][t.name] = [(t.label(int(c)), float(probs[i, c])) for c in order[i]]
        return results

    def __repr__(self) -> str:
        return (f"ExportedModel({str(self.path)!r}, file={self.file!r}, runner={self.runner.name}, "
                f"tasks={self.task_names})")


def _pick_device(device: str) -> str:
    if device not in DEVICES:
        raise ExportError(f"unknown device '{device}'; choose from {', '.join(DEVICES)}")
    if device != "auto":
        return device
    from .runners import missing_reason

    return "cuda" if missing_reason("ort-cuda") is None else "cpu"


def load_export(path: str | os.PathLike, *, device: str = "auto", precision: str = "fp32",
                threads: int | None = None, check_hashes: bool = True) -> ExportedModel:
    """Load an export directory written by ``subtune-edge export``.

    ``device``: ``auto`` (ONNX Runtime's CUDA provider where available, else CPU), ``cpu``,
    ``cuda``, or ``tensorrt`` (the ``model.plan`` engine). ``precision``: ``fp32`` runs
    ``model.onnx``, ``fp16`` runs ``model.fp16.onnx`` (exported with ``--fp16``). The file that
    will run is re-hashed against the manifest unless ``check_hashes=False``.
    """
    from exporters.manifest import read_manifest, require_intact

    from .runners import OrtRunner, TrtRunner, require

    root = Path(path)
    manifest = read_manifest(root)
    device = _pick_device(device)
    if precision not in ("fp32", "fp16"):
        raise ExportError(f"unknown precision '{precision}'; choose fp32 or fp16")
    if device == "tensorrt":
        file = "model.plan"
    else:
        file = "model.onnx" if precision == "fp32" else "model.fp16.onnx"
    if file not in manifest["files"]:
        flag = {"model.plan": "--trt", "model.fp16.onnx": "--fp16"}.get(file, "")
        raise ExportError(f"{root} has no {file}; export with {flag} to get it")
    if check_hashes:
        require_intact(root, manifest, [f for f in manifest["files"] if f == file or f == file + ".data"])
    if device == "tensorrt":
        require("trt")
        runner = TrtRunner(root / file)
    else:
        runner = OrtRunner(root / file, device=device, threads=threads)
    return ExportedModel(root, manifest, runner, file)
