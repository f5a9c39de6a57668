"""The task file's metadata, checked once at its reader, and the task name rule.

A task file is data a user may have been handed: every field of its metadata is checked for type
and range here, against ``subtune_edge/schema/task.schema.json`` and then the rules a schema cannot
state (the task-name rule, ``model_args`` other than ``img_size``, ``head.in_features``), so that no
code past :func:`~subtune_edge.task.load_task` meets a wrong type (a traceback) or a value
subtune-edge never writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..backbone import BackboneSpec, check_model_args
from ..errors import BackboneError, TaskFileError
from ..schema import FileFormat, message, validate

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


#: the task file's metadata format: its schema (``subtune_edge/schema/task.schema.json``) and how errors read
TASK_FORMAT = FileFormat("task.schema.json", TaskFileError, "re-train or re-save the task", "metadata field ")


@dataclass
class TaskMetadata:
    """A task file's metadata, every field checked: what :class:`~subtune_edge.task.Task` holds besides tensors.

    Attributes are those of :class:`~subtune_edge.task.Task` of the same names.
    """

    name: str
    backbone: BackboneSpec
    fingerprint: str
    tuned_units: list[str]
    num_features: int
    num_classes: int
    labels: list[str] = field(default_factory=list)
    preprocessing: dict = field(default_factory=dict)
    siamese: bool = False
    training: dict = field(default_factory=dict)
    pruned: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, meta: dict, path: Path) -> TaskMetadata:
        """Check ``meta`` field by field, once, at the reader.

        Args:
            meta: the metadata object (format and version already checked).
            path: the file, for the messages.

        Returns:
            The checked metadata.

        Raises:
            TaskFileError: naming the file, the field and what was expected.
        """
        return _read(meta, path)


def _read(meta: dict, path: Path) -> TaskMetadata:
    where = f"task file {path}"
    validate(meta, TASK_FORMAT, where)
    name = meta["name"]
    try:
        validate_task_name(name)
    except TaskFileError as exc:
        raise TaskFileError(f"{where}: metadata field 'name': {exc}") from exc
    bb = meta["backbone"]
    try:
        model_args = check_model_args(bb.get("model_args", {}))
    except BackboneError as exc:
        raise TaskFileError(f"{where}: metadata field 'backbone.model_args': {exc}") from exc
    head = meta["head"]
    siamese = meta.get("siamese", False)
    pruned = meta.get("pruned") or {}
    branch = pruned.get("features", head["num_features"])
    if branch > head["num_features"]:
        raise TaskFileError(message(TASK_FORMAT, where, "pruned.features", branch,
                                    f"at most num_features ({head['num_features']}): pruning only narrows"))
    in_features = branch + (head["num_features"] if siamese else 0)
    if head.get("in_features", in_features) != in_features:
        shown = "pruned.features" if "features" in pruned else "num_features"
        raise TaskFileError(message(TASK_FORMAT, where, "head.in_features", head["in_features"],
                                    f"{in_features} ({shown}{' + num_features, Siamese' if siamese else ''})"))
    return TaskMetadata(name=name, backbone=BackboneSpec(bb["model_name"], bb.get("weights", "timm"),
                                                         dict(model_args)),
                        fingerprint=meta["fingerprint"], tuned_units=list(meta["tuned_units"]),
                        num_features=head["num_features"], num_classes=head["num_classes"],
                        labels=list(meta.get("labels", [])), preprocessing=dict(meta.get("preprocessing", {})),
                        siamese=siamese, training=dict(meta.get("training", {})), pruned=dict(pruned))
