"""The task file: what one SubTuned task adds to a frozen backbone, and nothing else.

Like a PEFT adapter, ``<name>.safetensors`` holds only trained tensors: the task's copies of its
tuned units (names prefixed by the unit name, e.g. ``layer4.1.conv1.weight``) and its head
(``head.weight``, ``head.bias``). The ``__metadata__`` entry ``subtune_edge`` holds JSON with
what is needed to rebuild and check the rest: the backbone spec, the fingerprint of the frozen
weights the task was trained on, the tuned units, the head shape, labels, preprocessing, the
Siamese flag, the training record, and a hash of the tensor bytes (so an edited or truncated
file is refused instead of half-loaded).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .backbone import Backbone, BackboneSpec
from .errors import TaskFileError
from .io import atomic_write_bytes, jsonable

FORMAT = "subtune-edge.task"
FORMAT_VERSION = 1
METADATA_KEY = "subtune_edge"
SUFFIX = ".safetensors"
MAX_NAME_LENGTH = 128


def validate_task_name(name: str) -> str:
    """Refuse a task name that cannot safely be a file name and an ONNX output name.

    A task name becomes ``<task_dir>/<name>.safetensors``, an output of the fused graph and a file
    in an export, so one rule, shared by training, export and the task file itself, keeps a name
    from escaping its folder (``../x``), naming the folder itself (``''``) or hiding (``.x``).

    Args:
        name: the task name to check.

    Returns:
        ``name`` unchanged, so that callers can write ``name = validate_task_name(name)``.

    Raises:
        TaskFileError: naming the name and the rule it breaks (``param="name"``).
    """
    def refuse(rule: str) -> TaskFileError:
        shown = name if len(name) <= 60 else name[:40] + "..."
        return TaskFileError(f"task {{param}} {shown!r} {rule}; use letters, digits, '-', '_' or '.'", param="name")

    if not isinstance(name, str):
        raise TaskFileError(f"task {{param}} must be a string, not {type(name).__name__}", param="name")
    if not name:
        raise refuse("is empty")
    if "/" in name or "\\" in name:
        raise refuse("holds a path separator")
    if name in (".", ".."):
        raise refuse("is a '..' or '.' path component")
    if name.startswith("."):
        raise refuse("starts with a dot")
    if not name.isprintable() or any(c.isspace() and c != " " for c in name):
        raise refuse("holds a non-printable character")
    if name != name.strip():
        raise refuse("starts or ends with a space")
    if len(name) > MAX_NAME_LENGTH:
        raise refuse(f"is {len(name)} characters long (at most {MAX_NAME_LENGTH})")
    return name


@dataclass
class Task:
    """One task: its tuned unit weights, its head and the metadata that ties them to a backbone."""

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

    @property
    def head_in_features(self) -> int:
        return self.num_features * (2 if self.siamese else 1)

    @property
    def mode(self) -> str:
        return self.training.get("mode") or ("linear-probe" if not self.tuned_units else "subtune")

    def unit_state(self, unit: str) -> dict[str, torch.Tensor]:
        prefix = unit + "."
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def head_state(self) -> dict[str, torch.Tensor]:
        return {"weight": self.tensors["head.weight"], "bias": self.tensors["head.bias"]}

    def metadata(self) -> dict:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "name": self.name,
            "backbone": self.backbone.to_json(), "fingerprint": self.fingerprint,
            "tuned_units": list(self.tuned_units),
            "head": {"in_features": self.head_in_features, "num_classes": self.num_classes,
                     "num_features": self.num_features},
            "labels": list(self.labels), "preprocessing": jsonable(self.preprocessing),
            "siamese": self.siamese, "training": jsonable(self.training),
        }

    # -- checks ---------------------------------------------------------------------------------
    def check_backbone(self, backbone: Backbone) -> None:
        """Refuse, in one line, a task that cannot run on ``backbone`` as it is."""
        where = f"task '{self.name}'"
        if backbone.name != self.backbone.model_name:
            raise TaskFileError(f"{where} was trained on '{self.backbone.model_name}', not "
                                f"'{backbone.name}'; export it with tasks of the same backbone")
        if backbone.fingerprint != self.fingerprint:
            raise TaskFileError(
                f"{where} was trained on other {backbone.name} weights (fingerprint {self.fingerprint[:8]}… "
                f"!= {backbone.fingerprint[:8]}…); export it with the weights it was trained on "
                f"(--weights {self.backbone.weights})")
        if backbone.num_features != self.num_features:
            raise TaskFileError(f"{where} expects {self.num_features} features but {backbone.name} "
                                f"gives {backbone.num_features}; was it trained on another variant?")
        for unit in self.tuned_units:
            expected = {k: tuple(v.shape) for k, v in backbone.units[unit].state_dict().items()} \
                if unit in backbone.units else None
            if expected is None:
                raise TaskFileError(f"{where} tunes unit '{unit}', which {backbone.name} does not have")
            got = {k: tuple(v.shape) for k, v in self.unit_state(unit).items()}
            if got != expected:
                diff = sorted(set(got.items()) ^ set(expected.items()))[:2]
                raise TaskFileError(f"{where}: tensors of unit '{unit}' do not match {backbone.name} "
                                    f"(first differences: {diff}); the file was edited or is for another model")

    def _check_consistent(self, path: Path) -> None:
        known = {f"{u}." for u in self.tuned_units}
        stray = [k for k in self.tensors if not k.startswith("head.") and not any(k.startswith(p) for p in known)]
        if stray:
            raise TaskFileError(f"task file {path} holds tensors of units it does not list as tuned "
                                f"({stray[0]}, ...); re-save it with subtune-edge")
        w, b = self.tensors.get("head.weight"), self.tensors.get("head.bias")
        want = (self.num_classes, self.head_in_features)
        if w is None or b is None or tuple(w.shape) != want or tuple(b.shape) != (self.num_classes,):
            got = None if w is None else tuple(w.shape)
            raise TaskFileError(f"task file {path}: head weight has shape {got}, metadata says {want}; "
                                "the file was edited, re-train or re-save it")
        if self.labels and len(self.labels) != self.num_classes:
            raise TaskFileError(f"task file {path} lists {len(self.labels)} labels for {self.num_classes} classes")


def content_hash(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_task(task: Task, path: str | os.PathLike) -> Path:
    """Write ``task`` atomically as a safetensors file; returns the path written."""
    validate_task_name(task.name)
    path = Path(path)
    if path.suffix != SUFFIX:
        path = path.with_name(path.name + SUFFIX)
    tensors = {k: v.detach().cpu().contiguous() for k, v in task.tensors.items()}
    meta = task.metadata()
    meta["content_sha256"] = content_hash(tensors)
    try:
        atomic_write_bytes(path, st_save(tensors, metadata={METADATA_KEY: json.dumps(meta)}))
    except OSError as exc:
        raise TaskFileError(f"cannot write task file {path} ({exc.strerror}); choose a writable --task-dir") from exc
    return path


def load_task(path: str | os.PathLike) -> Task:
    """Read and self-check a task file (format, integrity, head shape); see :meth:`Task.check_backbone`."""
    path = Path(path)
    if not path.is_file():
        raise TaskFileError(f"task file {path} does not exist; train it with `subtune-edge tune` or fix --task-dir")
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
    if meta.get("format") != FORMAT:
        raise TaskFileError(f"{path} is not a subtune-edge task file (format {meta.get('format')!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise TaskFileError(f"task file {path} has format version {version}, this subtune-edge reads "
                            f"{FORMAT_VERSION}; upgrade subtune-edge or re-save the task")
    if content_hash(tensors) != meta.get("content_sha256"):
        raise TaskFileError(f"task file {path} failed its integrity check (tensor bytes were changed "
                            "after saving); re-train or re-copy it")
    try:
        validate_task_name(meta.get("name"))
    except TaskFileError as exc:
        raise TaskFileError(f"task file {path}: metadata field 'name': {exc}") from exc
    head = meta["head"]
    task = Task(
        name=meta["name"], backbone=BackboneSpec.from_json(meta["backbone"]), fingerprint=meta["fingerprint"],
        tuned_units=list(meta["tuned_units"]), num_features=int(head["num_features"]),
        num_classes=int(head["num_classes"]), tensors=tensors, labels=list(meta.get("labels") or []),
        preprocessing=dict(meta.get("preprocessing") or {}), siamese=bool(meta.get("siamese")),
        training=dict(meta.get("training") or {}))
    task._check_consistent(path)
    return task


def resolve_task_path(spec: str, task_dir: str | os.PathLike | None = None) -> Path:
    """A task given on the command line: a path to a file, or a name in ``task_dir``."""
    as_path = Path(spec)
    if as_path.suffix == SUFFIX or os.sep in spec:
        return as_path
    validate_task_name(spec)
    folder = Path(task_dir) if task_dir else Path(".")
    candidate = folder / f"{spec}{SUFFIX}"
    if not candidate.is_file():
        known = sorted(p.stem for p in folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []
        hint = f"; tasks there: {', '.join(known)}" if known else "; pass --task-dir or a path to a .safetensors file"
        raise TaskFileError(f"unknown task '{spec}': no {candidate}{hint}")
    return candidate


def load_tasks(specs: list[str], task_dir: str | os.PathLike | None = None) -> list[Task]:
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
              training: dict | None = None) -> Task:
    """Package trained modules as a :class:`Task` tied to ``backbone``'s frozen weights."""
    validate_task_name(name)
    order = [u for u in backbone.unit_names if u in tuned]
    tensors = {f"{u}.{k}": v.detach().cpu().clone() for u in order for k, v in tuned[u].state_dict().items()}
    tensors["head.weight"] = head.weight.detach().cpu().clone()
    tensors["head.bias"] = head.bias.detach().cpu().clone()
    task = Task(name=name, backbone=backbone.spec, fingerprint=backbone.fingerprint, tuned_units=order,
                num_features=backbone.num_features, num_classes=head.out_features, tensors=tensors,
                labels=list(labels or []), preprocessing=dict(preprocessing or backbone.data_config),
                siamese=siamese, training=dict(training or {}))
    task._check_consistent(Path(f"<task {name}>"))
    return task
