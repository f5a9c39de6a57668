"""The task file's metadata, checked once at its reader, and the task name rule.

A task file is data a user may have been handed: every field of its metadata is checked for type
and range here, so that no code past :func:`~subtune_edge.task.load_task` meets a wrong type (a
traceback) or a value subtune-edge never writes (``model_args`` other than ``img_size``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..backbone import BackboneSpec, check_model_args
from ..errors import BackboneError, TaskFileError

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


_MISSING = object()


def describe(value) -> str:
    """A JSON value as an error message names it: ``a string "two"``, ``a list``, ``null``, ``missing``."""
    if value is _MISSING or value is None:
        return "missing" if value is _MISSING else "null"
    kind = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
    text = json.dumps(value) if not isinstance(value, (list, dict)) else ""
    return f"{kind} {text[:40]}".rstrip()


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _numbers(n: int, ok=lambda x: True):
    return lambda v: isinstance(v, list) and len(v) == n and all(_is_number(x) and ok(x) for x in v)


_PREPROCESSING = {  # key -> (check, what is expected); keys a timm data config has
    "input_size": (lambda v: _numbers(3, _is_int)(v) and v[0] == 3 and 0 < v[1] <= 8192 and 0 < v[2] <= 8192,
                   "[3, height, width] with height and width in 1..8192"),
    "mean": (_numbers(3), "a list of 3 numbers"),
    "std": (_numbers(3, lambda x: x > 0), "a list of 3 positive numbers"),
    "interpolation": (lambda v: isinstance(v, str), "a string such as 'bilinear'"),
    "crop_pct": (lambda v: _is_number(v) and 0 < v <= 4, "a number in (0, 4]"),
    "crop_mode": (lambda v: isinstance(v, str), "a string such as 'center'"),
}


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
    def field_(obj: dict, key: str, ok, expected: str, where: str = "", default=_MISSING):
        value = obj.get(key, _MISSING)
        if value is _MISSING and default is not _MISSING:
            return default
        if value is _MISSING or not ok(value):
            raise TaskFileError(f"task file {path}: metadata field '{where}{key}' is {describe(value)}, "
                                f"expected {expected}; re-train or re-save the task")
        return value

    def is_dict(v) -> bool:
        return isinstance(v, dict)

    name = field_(meta, "name", lambda v: isinstance(v, str), "the task name (a string)")
    try:
        validate_task_name(name)
    except TaskFileError as exc:
        raise TaskFileError(f"task file {path}: metadata field 'name': {exc}") from exc
    bb = field_(meta, "backbone", is_dict, "an object with model_name, weights and model_args")
    model_name = field_(bb, "model_name", lambda v: isinstance(v, str) and v != "", "a timm model name",
                        "backbone.")
    weights = field_(bb, "weights", lambda v: isinstance(v, str) and v != "",
                     "a weights source (timm, random, offline or a file path)", "backbone.", "timm")
    model_args = field_(bb, "model_args", is_dict, "an object of model arguments", "backbone.", {})
    try:
        model_args = check_model_args(model_args)
    except BackboneError as exc:
        raise TaskFileError(f"task file {path}: metadata field 'backbone.model_args': {exc}") from exc
    fingerprint = field_(meta, "fingerprint", lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v),
                         "a sha256 hex digest (64 characters)")
    tuned_units = field_(meta, "tuned_units", lambda v: _str_list(v) and len(set(v)) == len(v),
                         "a list of distinct unit names")
    head = field_(meta, "head", is_dict, "an object with num_features and num_classes")
    positive = "a positive integer"
    num_features = field_(head, "num_features", lambda v: _is_int(v) and v > 0, positive, "head.")
    num_classes = field_(head, "num_classes", lambda v: _is_int(v) and v > 0, positive, "head.")
    siamese = field_(meta, "siamese", lambda v: isinstance(v, bool), "true or false", default=False)
    in_features = num_features * (2 if siamese else 1)
    field_(head, "in_features", lambda v: v == in_features,
           f"{in_features} (num_features{' x 2, Siamese' if siamese else ''})", "head.", in_features)
    labels = field_(meta, "labels", _str_list, "a list of class names (strings)", default=[])
    preprocessing = field_(meta, "preprocessing", is_dict, "an object (a timm data config)", default={})
    for key, (ok, expected) in _PREPROCESSING.items():
        if key in preprocessing:
            field_(preprocessing, key, ok, expected, "preprocessing.")
    training = field_(meta, "training", is_dict, "an object (the training record)", default={})
    field_(training, "mode", lambda v: isinstance(v, str), "a string such as 'subtune'", "training.", None)
    return TaskMetadata(name=name, backbone=BackboneSpec(model_name, weights, dict(model_args)),
                        fingerprint=fingerprint, tuned_units=list(tuned_units), num_features=num_features,
                        num_classes=num_classes, labels=list(labels), preprocessing=dict(preprocessing),
                        siamese=siamese, training=dict(training))
