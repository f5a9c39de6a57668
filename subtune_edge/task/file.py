"""The task file on disk: :class:`Task`, and saving, loading and finding task files.

The format is described in :mod:`subtune_edge.task`; its metadata is checked field by field in
:mod:`subtune_edge.task.metadata`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..backbone import Backbone, BackboneSpec, hash_tensors
from ..errors import TaskFileError
from ..io import atomic_write_bytes, jsonable
from ..schema import describe
from .metadata import FORMAT, FORMAT_VERSION, METADATA_KEY, SUFFIX, TaskMetadata, validate_task_name

log = logging.getLogger(__name__)


@dataclass
class Task:
    """One task: its tuned unit weights, its head and the metadata that ties them to a backbone.

    Attributes:
        name: the task's name, also its file name and its output name in an export.
        backbone: how to rebuild the backbone it was trained on.
        fingerprint: sha256 of the frozen weights it relies on (:attr:`Backbone.fingerprint`).
        tuned_units: the units it tunes, in model order.
        num_features: features the backbone gives the head.
        num_classes: outputs of the head.
        tensors: its tensors: ``<unit>.<key>`` for tuned units, ``head.weight`` and ``head.bias``.
        labels: class names (empty, or one per class).
        preprocessing: the timm data config it was trained with.
        siamese: its head reads tuned and frozen features side by side.
        training: the training record (mode, epochs, samples, validation accuracy, ...).
        pruned: for a task whose tuned units were narrowed by structured pruning, what was pruned
            (``ratio``, ``importance``, ``channels`` kept of each pruned group by unit, ``features``
            when the head reads fewer features); empty for a full-width task. Its unit tensors then
            have the pruned shapes, and every loader rebuilds the units at those widths.
    """

    name: str
    backbone: BackboneSpec
    fingerprint: str
    tuned_units: list[str]
    num_features: int
    num_classes: int
    tensors: dict[str, torch.Tensor]
    labels: list[str] = field(default_factory=list)
    preprocessing: dict = field(default_factory=dict)
    siamese: bool = False
    training: dict = field(default_factory=dict)
    pruned: dict = field(default_factory=dict)

    @property
    def branch_features(self) -> int:
        """Features the task's own branch gives its head: fewer than the backbone's when pruning narrowed them."""
        return int(self.pruned.get("features", self.num_features))

    @property
    def head_in_features(self) -> int:
        """Inputs of the head: the branch's features, and the frozen ones beside them for a Siamese task."""
        return self.branch_features + (self.num_features if self.siamese else 0)

    @property
    def prune_ratio(self) -> float:
        """The share of channels pruned from the tuned units (0 for a full-width task)."""
        return float(self.pruned.get("ratio", 0.0))

    @property
    def mode(self) -> str:
        """How it was trained: ``linear-probe``, ``subtune``, ``full``, ``synthetic``, ..."""
        return self.training.get("mode") or ("linear-probe" if not self.tuned_units else "subtune")

    def unit_state(self, unit: str) -> dict[str, torch.Tensor]:
        """The state_dict of the task's copy of ``unit``."""
        prefix = unit + "."
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def head_state(self) -> dict[str, torch.Tensor]:
        """The head's state_dict."""
        return {"weight": self.tensors["head.weight"], "bias": self.tensors["head.bias"]}

    def metadata(self) -> dict:
        """The JSON the task file stores (without the tensor hash, which :func:`save_task` adds)."""
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "name": self.name,
            "backbone": self.backbone.to_json(), "fingerprint": self.fingerprint,
            "tuned_units": list(self.tuned_units),
            "head": {"in_features": self.head_in_features, "num_classes": self.num_classes,
                     "num_features": self.num_features},
            "labels": list(self.labels), "preprocessing": jsonable(self.preprocessing),
            "siamese": self.siamese, "training": jsonable(self.training),
        } | ({"pruned": jsonable(self.pruned)} if self.pruned else {})

    # -- checks ---------------------------------------------------------------------------------
    def check_backbone(self, backbone: Backbone) -> None:
        """Refuse, in one line, a task that cannot run on ``backbone`` as it is.

        Args:
            backbone: the backbone the task would run on.

        Raises:
            TaskFileError: another model, other frozen weights (by fingerprint), another number of
                features, or unit tensors that do not match the backbone's.
        """
        where = f"task '{self.name}'"
        if backbone.name != self.backbone.model_name:
            raise TaskFileError(f"{where} was trained on '{self.backbone.model_name}', not "
                                f"'{backbone.name}'; export it with tasks of the same backbone")
        if backbone.fingerprint != self.fingerprint:
            raise TaskFileError(
                f"{where} was trained on other {backbone.name} weights (fingerprint {self.fingerprint[:8]}… "
                f"!= {backbone.fingerprint[:8]}…); export it with the weights it was trained on "
                f"({{param}} {self.backbone.weights[:80]})", param="weights")
        if backbone.num_features != self.num_features:
            raise TaskFileError(f"{where} expects {self.num_features} features but {backbone.name} "
                                f"gives {backbone.num_features}; was it trained on another variant?")
        for unit in self.tuned_units:
            expected = {k: tuple(v.shape) for k, v in backbone.units[unit].state_dict().items()} \
                if unit in backbone.units else None
            if expected is None:
                raise TaskFileError(f"{where} tunes unit '{unit}', which {backbone.name} does not have")
            got = {k: tuple(v.shape) for k, v in self.unit_state(unit).items()}
            if got == expected:
                continue
            narrower = got.keys() == expected.keys() and all(
                len(got[k]) == len(expected[k]) and all(a <= b for a, b in zip(got[k], expected[k])) for k in got)
            if narrower and self.pruned:
                continue  # a pruned task's units: the shapes are its own, each no wider than the backbone's
            diff = sorted(set(got.items()) ^ set(expected.items()))[:2]
            raise TaskFileError(f"{where}: tensors of unit '{unit}' do not match {backbone.name} "
                                f"(first differences: {diff}); the file was edited or is for another model")

    def _check_consistent(self, path: Path) -> None:
        known = {f"{u}." for u in self.tuned_units}
        stray = [k for k in self.tensors if not k.startswith("head.") and not any(k.startswith(p) for p in known)]
        if stray:
            raise TaskFileError(f"task file {path} holds tensors of units it does not list as tuned "
                                f"({stray[0]}, ...); re-save it with subtune-edge")
        for key, t in self.tensors.items():
            counter = key.endswith(".num_batches_tracked")  # BatchNorm's step counter, an integer
            if counter and (t.is_floating_point() or t.dtype == torch.bool or t.is_complex()):
                raise TaskFileError(f"task file {path}: tensor {key} is {t.dtype}, expected an integer counter; "
                                    "the file was edited, re-train or re-save it")
            if not counter and not t.is_floating_point():
                raise TaskFileError(f"task file {path}: tensor {key} is {t.dtype}, expected floating point "
                                    "(weights are floats); the file was edited, re-train or re-save it")
            if not counter and not bool(torch.isfinite(t).all()):
                raise TaskFileError(f"task file {path}: tensor {key} holds NaN or infinite values (training "
                                    "diverged?); re-train the task")
        w, b = self.tensors.get("head.weight"), self.tensors.get("head.bias")
        want = (self.num_classes, self.head_in_features)
        if w is None or b is None or tuple(w.shape) != want or tuple(b.shape) != (self.num_classes,):
            got = None if w is None else tuple(w.shape)
            raise TaskFileError(f"task file {path}: head weight has shape {got}, metadata says {want}; "
                                "the file was edited, re-train or re-save it")
        if self.labels and len(self.labels) != self.num_classes:
            raise TaskFileError(f"task file {path} lists {len(self.labels)} labels for {self.num_classes} classes")


def content_hash(tensors: dict[str, torch.Tensor]) -> str:
    """The sha256 a task file records over its tensors (names, dtypes, shapes and bytes)."""
    return hash_tensors(tensors.items(), sort=True)


def save_task(task: Task, path: str | os.PathLike) -> Path:
    """Write ``task`` atomically as a safetensors file (honouring the umask).

    The task is checked as :func:`load_task` would check it first, so a file that could not be
    loaded back (a bad name, a head of the wrong shape, NaN weights from a diverged run) is never
    written.

    Args:
        task: the task to write.
        path: the file; ``.safetensors`` is appended when missing.

    Returns:
        The path written.

    Raises:
        TaskFileError: the task is not consistent, or the file cannot be written.
    """
    validate_task_name(task.name)
    path = Path(path)
    if path.suffix != SUFFIX:
        path = path.with_name(path.name + SUFFIX)
    task._check_consistent(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in task.tensors.items()}
    meta = task.metadata()
    meta["content_sha256"] = content_hash(tensors)
    TaskMetadata.from_json(json.loads(json.dumps(meta)), path)  # the reader's checks, before anything is written
    try:
        atomic_write_bytes(path, st_save(tensors, metadata={METADATA_KEY: json.dumps(meta)}))
    except OSError as exc:
        raise TaskFileError(f"cannot write task file {path} ({exc.strerror}); choose a writable folder") from exc
    return path


def load_task(path: str | os.PathLike) -> Task:
    """Read and self-check a task file; what it needs from a backbone is checked by :meth:`Task.check_backbone`.

    The file is data: its metadata is checked field by field against the format (types, the task
    name rule, only model arguments subtune-edge writes), its tensors against their hash, the head
    and units' tensors for shape, dtype and finiteness. Nothing in it is executed or opened.

    Args:
        path: the ``.safetensors`` task file.

    Returns:
        The task.

    Raises:
        TaskFileError: one line naming the file, the field at fault and what was expected.
    """
    path = Path(path)
    if not path.is_file():
        raise TaskFileError(f"task file {path} does not exist; train it with `subtune-edge tune` or check the path")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise TaskFileError(f"task file {path} is corrupt or truncated ({str(exc)[:120]}); "
                            "re-train or re-copy it") from exc
    raw = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if raw is None:
        raise TaskFileError(f"{path} is a safetensors file but not a subtune-edge task (no '{METADATA_KEY}' "
                            "metadata); create tasks with `subtune-edge tune`")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise TaskFileError(f"task file {path} has corrupt metadata ({exc}); re-train or re-copy it") from exc
    if not isinstance(meta, dict):
        raise TaskFileError(f"task file {path}: its metadata is {describe(meta)}, expected a JSON object; "
                            "re-train or re-save the task")
    if meta.get("format") != FORMAT:
        raise TaskFileError(f"{path} is not a subtune-edge task file (format {meta.get('format')!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise TaskFileError(f"task file {path} has format version {version}, this subtune-edge reads "
                            f"{FORMAT_VERSION}; upgrade subtune-edge or re-save the task")
    if content_hash(tensors) != meta.get("content_sha256"):
        raise TaskFileError(f"task file {path} failed its integrity check (tensor bytes were changed "
                            "after saving); re-train or re-copy it")
    task = Task(tensors=tensors, **vars(TaskMetadata.from_json(meta, path)))
    task._check_consistent(path)
    log.debug("loaded task %s from %s", task.name, path)
    return task


def resolve_task_path(spec: str, task_dir: str | os.PathLike | None = None) -> Path:
    """A task given by the user: a path to a file (it ends in ``.safetensors`` or holds a ``/``), or a name.

    Args:
        spec: the path or the task name.
        task_dir: where names are looked up; None for the current folder.

    Returns:
        The task file's path.

    Raises:
        TaskFileError: a name that is not valid (:func:`validate_task_name`) or has no file in ``task_dir``.
    """
    as_path = Path(spec)
    if as_path.suffix == SUFFIX or os.sep in spec:
        return as_path
    validate_task_name(spec)
    folder = Path(task_dir) if task_dir else Path(".")
    candidate = folder / f"{spec}{SUFFIX}"
    if not candidate.is_file():
        known = sorted(p.stem for p in folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []
        hint = f"; tasks there: {', '.join(known)}" if known else "; pass {param} or a path to a .safetensors file"
        raise TaskFileError(f"unknown task '{spec}': no {candidate}{hint}", param="task_dir")
    return candidate


def load_tasks(specs: list[str], task_dir: str | os.PathLike | None = None) -> list[Task]:
    """Load several tasks, each a name in ``task_dir`` or a path (see :func:`resolve_task_path`).

    Args:
        specs: task names or task file paths.
        task_dir: where names are looked up.

    Returns:
        The tasks, in ``specs`` order.

    Raises:
        TaskFileError: a task that cannot be found or loaded, or two tasks of the same name.
    """
    tasks = [load_task(resolve_task_path(s, task_dir)) for s in specs]
    seen: dict[str, int] = {}
    for t in tasks:
        seen[t.name] = seen.get(t.name, 0) + 1
    dup = [n for n, c in seen.items() if c > 1]
    if dup:
        raise TaskFileError(f"task name '{dup[0]}' is given twice; each task must have its own name")
    return tasks


def make_task(name: str, backbone: Backbone, tuned: dict[str, torch.nn.Module], head: torch.nn.Linear, *,
              labels: list[str] | None = None, preprocessing: dict | None = None, siamese: bool = False,
              training: dict | None = None, pruned: dict | None = None) -> Task:
    """Package trained modules as a :class:`Task` tied to ``backbone``'s frozen weights.

    Args:
        name: the task name (:func:`validate_task_name`).
        backbone: the frozen backbone the modules were trained on.
        tuned: the tuned unit copies by unit name.
        head: the trained head.
        labels: class names, one per output.
        preprocessing: the timm data config; None for the backbone's.
        siamese: the head reads tuned and frozen features side by side.
        training: the training record.
        pruned: what structured pruning narrowed (see :attr:`Task.pruned`); None for full-width units.

    Returns:
        The task, with copies of the tensors on the CPU.

    Raises:
        TaskFileError: a bad name, a head of the wrong shape or non-finite weights.
    """
    validate_task_name(name)
    order = [u for u in backbone.unit_names if u in tuned]
    tensors = {f"{u}.{k}": v.detach().cpu().clone() for u in order for k, v in tuned[u].state_dict().items()}
    tensors["head.weight"] = head.weight.detach().cpu().clone()
    tensors["head.bias"] = head.bias.detach().cpu().clone()
    task = Task(name=name, backbone=backbone.spec, fingerprint=backbone.fingerprint, tuned_units=order,
                num_features=backbone.num_features, num_classes=head.out_features, tensors=tensors,
                labels=list(labels or []), preprocessing=dict(preprocessing or backbone.data_config),
                siamese=siamese, training=dict(training or {}), pruned=dict(pruned or {}))
    task._check_consistent(Path(f"<task {name}>"))
    return task
