"""Use an export from Python: ``load_export(DIR)`` -> a model that takes images or arrays.

This is what users check an export with before they embed it, and the reference the C++ runner
is compared against, so it does exactly what ``exporters/FORMAT.md`` tells an app to do (see
:mod:`.preprocess`), then one run of the fused graph, whose outputs come back by task name::

    model = subtune_edge.load_export("out")
    logits = model(["cat.jpg", "dog.jpg"])          # {"digit": array[2, 10], "parity": ...}
    model.predict(["cat.jpg"], topk=3)              # [{"digit": [("3", 0.91), ...], ...}]

The graph runs on any registered runtime (:mod:`.registry`): ONNX Runtime (CUDA provider when
onnxruntime-gpu sees a GPU, else CPU), the TensorRT plan with ``device="tensorrt"``, OpenVINO
with ``runtime="openvino"``, a plug-in's by its name, or ONNX Runtime's mobile format with
``format="ort"`` (``model.ort``, exported with ``ort_format``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ExportError, SubtuneError
from .base import Runner
from .manifest import Manifest, TaskOutput, read_manifest
from .modular import ModularRunner
from .ort_layout import ort_name
from .preprocess import preprocess, softmax
from .registry import RuntimeSpec, resolve, runtimes

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
#: the ONNX file each precision runs
PRECISION_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
#: the file format ONNX Runtime loads: the ``.onnx`` graph or its ``.ort`` twin (ONNX Runtime Mobile)
FORMATS = ("onnx", "ort")
#: the export option that writes each optional file, for the message when it is missing
_MADE_BY = {"model.plan": "trt", "model.fp16.onnx": "fp16", "model.int8.onnx": "int8"}


class ExportedModel:
    """An export directory loaded for inference; a context manager that releases the session.

    Built by :func:`load_export`. ``tasks`` are the manifest's :class:`TaskOutput` records in
    output order; ``manifest`` is the checked :class:`Manifest`.
    """

    def __init__(self, path: Path, manifest: Manifest, runner: Runner, file: str,
                 tasks: Sequence[TaskOutput] | None = None):
        self.path, self.manifest, self.runner, self.file = Path(path), manifest, runner, file
        self.tasks: list[TaskOutput] = list(tasks) if tasks else list(manifest.tasks)
        self.preprocessing = manifest.preprocessing
        self.input_name = manifest.input.name
        self.batch_min, self.batch_max = manifest.batch.min, manifest.batch.max
        self.input_hw = manifest.input.hw
        self._checked = False

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def activate(self) -> ExportedModel:
        """Create the session / engine and check it has the manifest's input and outputs.

        Raises:
            ExportError: the runtime cannot load the file, or it lacks the manifest's input / outputs.
        """
        try:
            self.runner.activate()
        except SubtuneError:
            raise
        except Exception as exc:  # runtimes raise their own types (ORT's Fail, InvalidProtobuf, ...)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ExportError(f"{self.runner.name} cannot load {self.path / self.file} ({first}); re-export") from None
        if not self._checked:
            missing = [t.output for t in self.tasks if t.output not in self.runner.output_names]
            if missing or self.input_name not in self.runner.input_names:
                self.runner.deactivate()
                what = f"output(s) {missing}" if missing else f"input '{self.input_name}'"
                raise ExportError(f"{self.path / self.file} has no {what} that its manifest lists; re-export")
            self._checked = True
        return self

    def __enter__(self) -> ExportedModel:
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the session / engine."""
        self.runner.deactivate()

    def preprocess(self, images: Sequence) -> np.ndarray:
        """Images -> this export's NCHW float32 input, with the manifest's preprocessing."""
        return preprocess(images, self.preprocessing)

    def subset(self, tasks: Sequence[str] | None) -> list[TaskOutput]:
        """The loaded tasks named in ``tasks`` (names or outputs), in output order; None: all loaded tasks.

        Raises:
            ExportError: a task this model was not loaded with.
        """
        if tasks is None:
            return list(self.tasks)
        wanted = {self.manifest.task(t).name for t in ([tasks] if isinstance(tasks, str) else tasks)}
        missing = sorted(wanted - set(self.task_names))
        if missing or not wanted:
            raise ExportError(f"task(s) {', '.join(missing) or '(none)'} not loaded; this model runs "
                              f"{', '.join(self.task_names)} (pass them to load_export's {{param}})", param="tasks")
        return [t for t in self.tasks if t.name in wanted]

    def run(self, batch: np.ndarray, tasks: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """An NCHW float32 batch of any size -> {task name: logits}; split / padded to the batch range.

        Args:
            batch: the preprocessed input.
            tasks: run only these of the loaded tasks (None: all). On a modular export only their
                branches run, and the trunk only as deep as they need.

        Raises:
            ExportError: the batch is not ``[N, 3, H, W]`` at this export's size, or an unknown task.
        """
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1] != 3 or tuple(batch.shape[2:]) != self.input_hw:
            raise ExportError(f"input of shape {batch.shape} does not fit this export's "
                              f"[N, 3, {self.input_hw[0]}, {self.input_hw[1]}]")
        n = len(batch)
        wanted = self.subset(tasks)
        if n == 0:
            return {t.name: np.zeros((0, t.num_classes), np.float32) for t in wanted}
        self.activate()
        if isinstance(self.runner, ModularRunner):
            self.runner.select([t.output for t in wanted])
        parts: dict[str, list[np.ndarray]] = {t.name: [] for t in wanted}
        for start in range(0, n, self.batch_max):
            chunk = batch[start:start + self.batch_max]
            size = len(chunk)
            if size < self.batch_min:  # a fixed-batch export: pad with copies, trim afterwards
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_min - size, axis=0)])
            out = self.runner.infer({self.input_name: np.ascontiguousarray(chunk)})
            for t in wanted:
                parts[t.name].append(np.asarray(out[t.output], dtype=np.float32)[:size])
        return {name: np.concatenate(chunks) for name, chunks in parts.items()}

    def __call__(self, inputs, tasks: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Images (paths, PIL images, HxWxC uint8 arrays, or a list of them; an NxHxWxC uint8 batch) or a
        preprocessed NCHW float32 batch -> {task name: logits} (of ``tasks`` only, when given)."""
        if isinstance(inputs, np.ndarray) and inputs.ndim == 4:
            # float NCHW: already preprocessed; uint8 NHWC: a batch of decoded images
            return self.run(inputs if inputs.dtype != np.uint8 else self.preprocess(list(inputs)), tasks)
        if isinstance(inputs, (str, os.PathLike)) or not isinstance(inputs, Sequence):
            inputs = [inputs]
        return self.run(self.preprocess(inputs), tasks)

    def predict(self, inputs, topk: int = 5, tasks: Sequence[str] | None = None
                ) -> list[dict[str, list[tuple[str, float]]]]:
        """Per image, per task (``tasks`` only, when given): the top-k (label, softmax score) pairs, best first."""
        logits = self(inputs, tasks)
        n = len(next(iter(logits.values())))
        results: list[dict[str, list[tuple[str, float]]]] = [{} for _ in range(n)]
        for t in self.subset(tasks):
            probs = softmax(logits[t.name].astype(np.float64))
            k = max(1, min(topk, t.num_classes))
            order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
            for i in range(n):
                results[i][t.name] = [(t.label(int(c)), float(probs[i, c])) for c in order[i]]
        return results

    def __repr__(self) -> str:
        return (f"ExportedModel({str(self.path)!r}, file={self.file!r}, runner={self.runner.name}, "
                f"tasks={self.task_names})")


def _runtime_for(runtime: str, device: str) -> RuntimeSpec:
    """The registered runtime that runs the export: ``device="tensorrt"`` is the plan on TensorRT."""
    if device not in DEVICES:
        raise ExportError(f"unknown {{param}} '{device}'; choose from {', '.join(DEVICES)}", param="device")
    try:
        if device == "tensorrt":
            spec = resolve("tensorrt" if runtime == "onnxruntime" else runtime, "cuda")
        else:
            spec = resolve(runtime, device)
    except SubtuneError as exc:
        raise ExportError(exc.template, param=exc.param) from None
    if spec.consumes == "module":
        files = ", ".join(s.name for s in runtimes() if s.consumes != "module")
        raise ExportError(f"{spec.name} runs PyTorch modules built from task files, not an export's files; choose "
                          f"{{param}} from {files} (benchmark PyTorch with bench --task-dir)", param="runtime")
    return spec


def load_export(path: str | os.PathLike, *, device: str = "auto", precision: str = "fp32",
                threads: int | None = None, check_hashes: bool = True, runtime: str = "onnxruntime",
                format: str = "onnx", tasks: Sequence[str] | None = None, modular: bool | None = None
                ) -> ExportedModel:
    """Load an export directory written by ``subtune-edge export`` for inference.

    The manifest is checked whole (schema, its own content hash, paths), and the file that will
    run is re-hashed and its graph checked against the manifest, so an edited or swapped export
    is refused before it runs.

    Args:
        path: the export folder.
        device: ``auto`` (the runtime family's CUDA runtime where it can run here, else its CPU one),
            ``cpu``, ``cuda``, or ``tensorrt`` (the ``model.plan`` engine on TensorRT).
        precision: ``fp32`` runs ``model.onnx``, ``fp16`` runs ``model.fp16.onnx`` (exported with
            ``fp16=True``), ``int8`` runs ``model.int8.onnx`` (exported with ``int8=True``; each task's
            branch precision and gate figures are in its manifest record, ``tasks[i].int8``).
        threads: the runtime's CPU threads (ONNX Runtime intra-op, OpenVINO's ``INFERENCE_NUM_THREADS``);
            ``None`` lets it choose.
        check_hashes: re-hash the file that will run (turn off only for files you just checked).
        runtime: a registered runtime (``ort-cpu``, ``ort-cuda``, ``openvino``, a plug-in's; see
            :func:`~subtune_edge.runtime.registry.runtime_names`) or a family that ``device`` picks one
            of: ``onnxruntime`` (default), ``openvino``, ``tensorrt``.
        format: ``onnx`` (default) or ``ort``: ONNX Runtime loads ``model.ort`` (``model.fp16.ort`` for
            fp16), the mobile-format twin written with ``ort_format=True``.
        tasks: load only these tasks (names or outputs; None: all). On a modular export
            (``modular=True`` at export) only their branch files load and run, and the trunk only
            as deep as they need; on a fused graph the others are still computed, just not returned.
        modular: run ``trunk.onnx`` + ``branches/`` instead of ``model.onnx`` (fp32, on a runtime that
            runs modular exports: ONNX Runtime CPU / CUDA); None: when ``tasks`` is given and the
            export is modular.

    Returns:
        An :class:`ExportedModel`; use it as a context manager to release the session.

    Raises:
        ExportError: not an export, an invalid or edited manifest, a changed or missing file, an
            unknown device, precision, runtime or format, or a combination that cannot run.
        RuntimeMissingError: the runtime for ``device`` (or OpenVINO) is not installed.
    """
    root = Path(path)
    spec = _runtime_for(runtime, device)
    if precision not in PRECISIONS:
        raise ExportError(f"unknown {{param}} '{precision}'; choose fp32, fp16 or int8", param="precision")
    if format not in FORMATS:
        raise ExportError(f"unknown {{param}} '{format}'; choose onnx or ort", param="format")
    if format != "onnx" and format not in spec.formats:  # "onnx" is the default: a plan runtime runs model.plan
        takes = ", ".join(s.name for s in runtimes() if format in s.formats and s.consumes != "module")
        raise ExportError(f"{spec.name} does not load .{format} files; load them with {{param}} {takes}",
                          param="runtime")
    if spec.consumes != "plan" and precision not in spec.precisions:
        raise ExportError(f"{spec.name} does not run {precision} files; choose {{param}} from "
                          f"{', '.join(spec.precisions)}", param="precision")
    file = "model.plan" if spec.consumes == "plan" else PRECISION_FILES[precision]
    if format == "ort":
        file = ort_name(file)
    manifest = read_manifest(root, verify_files=[file] if check_hashes else False)
    if file not in manifest.files:
        made_by = "ort_format" if file.endswith(".ort") else _MADE_BY.get(file, file)
        raise ExportError(f"{root} has no {file}; re-export with the '{made_by}' option to get it")
    selected = _selected(manifest, tasks)
    if modular and not spec.modular:
        takes = ", ".join(s.name for s in runtimes() if s.modular)
        raise ExportError(f"a modular export's trunk and branches run on {takes}, not {spec.name}; load it with "
                          "{param} onnxruntime", param="runtime")
    if modular or (modular is None and tasks is not None and manifest.modular is not None and spec.modular
                   and format == "onnx" and precision == "fp32"):
        return _load_modular(root, manifest, selected, spec, threads, check_hashes)
    spec.require()
    return ExportedModel(root, manifest, spec.runner(root / file, threads=threads, **spec.alone), file, selected)


def _selected(manifest: Manifest, tasks: Sequence[str] | None) -> list[TaskOutput] | None:
    if tasks is None:
        return None
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    if not names:
        raise ExportError("name at least one task in {param}", param="tasks")
    wanted = set()
    for name in names:
        try:
            wanted.add(manifest.task(name).name)
        except ExportError:
            raise ExportError(f"the export has no task '{name}'; its tasks are {', '.join(manifest.task_names)}",
                              param="tasks") from None
    return [t for t in manifest.tasks if t.name in wanted]


def _load_modular(root: Path, manifest: Manifest, selected: list[TaskOutput] | None, spec: RuntimeSpec,
                  threads: int | None, check_hashes: bool) -> ExportedModel:
    """The modular runner over trunk.onnx and the selected tasks' branch files (only those are hashed)."""
    layout = manifest.modular
    if layout is None:
        raise ExportError(f"{root} is not a modular export (no trunk.onnx); re-export with {{param}}",
                          param="modular")
    tasks = selected or list(manifest.tasks)
    if check_hashes:
        read_manifest(root, verify_files=[layout.trunk.file, *(layout.branch(t.output).file for t in tasks)])
    runner = ModularRunner(root, layout, manifest.input.name, [t.output for t in tasks], device=spec.device,
                           threads=threads)
    return ExportedModel(root, manifest, runner, layout.trunk.file, tasks)
