"""What a training run reports: :class:`RunRecord` (stored in the task file) and :class:`TrainResult`.

The record is the task file's ``training`` metadata; its JSON form is unchanged from the earlier
string-keyed dict, so task files written before read back the same. Reading one checks each
field's type and names the field that is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import SubtuneError
from ..multitask import TaskModel
from ..task import Task


def _type_name(expected: type | tuple) -> str:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "an object", type(None): "null"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def check_fields(data: Any, types: dict[str, type | tuple], where: str, required: set[str]) -> dict:
    """``data`` as a dict whose fields have the JSON types asked for; one-line error otherwise.

    Args:
        data: the parsed JSON.
        types: field -> accepted Python type(s) (``float`` accepts integers, never booleans).
        where: what the data is, for the message ("run log runs.json, run 'x'").
        required: fields that must be present.

    Raises:
        SubtuneError: naming ``where``, the field and what was expected.
    """
    if not isinstance(data, dict):
        raise SubtuneError(f"{where} must be an object, got {type(data).__name__}")
    for name in sorted(required):
        if name not in data:
            raise SubtuneError(f"{where} has no '{name}' (expected {_type_name(types[name])})")
    for name, expected in types.items():
        if name not in data:
            continue
        value = data[name]
        kinds = expected if isinstance(expected, tuple) else (expected,)
        ok = any(isinstance(value, k) and not (isinstance(value, bool) and k in (int, float)) for k in kinds)
        if not ok and float in kinds and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if ok and isinstance(value, float) and math.isnan(value) and float in kinds:
            ok = False
        if not ok:
            raise SubtuneError(f"{where}: '{name}' must be {_type_name(expected)}, got {value!r:.40}")
    return data


@dataclass
class RunRecord:
    """The record of one training run, as the task file stores it (``training`` metadata)."""

    mode: str
    units: list[str]
    siamese: bool
    epochs: int
    samples: int
    val_samples: int
    val_accuracy: float
    best_val_accuracy: float
    best_epoch: int
    history: list[dict]
    config: dict
    data: dict
    device: str
    amp_dtype: str | None
    prefix_cache: dict
    seconds: float
    step_seconds_mean: float
    trainable_params: int
    versions: dict = field(default_factory=dict)
    distributed: dict | None = None     # DDP runs: world size, backend, SyncBatchNorm, global batch

    _TYPES = {"mode": str, "units": list, "siamese": bool, "epochs": int, "samples": int, "val_samples": int,
              "val_accuracy": float, "best_val_accuracy": float, "best_epoch": int, "history": list,
              "config": dict, "data": dict, "device": str, "amp_dtype": (str, type(None)), "prefix_cache": dict,
              "seconds": float, "step_seconds_mean": float, "trainable_params": int, "versions": dict,
              "distributed": (dict, type(None))}

    @property
    def batch_size(self) -> int | None:
        """The (global) batch the run trained with."""
        return self.config.get("batch_size")

    @property
    def lr(self) -> float | None:
        """The peak learning rate of the run."""
        return self.config.get("lr")

    def to_json(self) -> dict:
        """The record as the task file stores it (the same keys, in the same order, as before)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("versions", "distributed")}
        if self.distributed is not None:
            out["distributed"] = self.distributed
        out["versions"] = self.versions
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "training record") -> RunRecord:
        """A record from its JSON, every field type-checked.

        Raises:
            SubtuneError: naming ``where``, the field and what was expected.
        """
        required = {f.name for f in fields(cls)} - {"versions", "distributed"}
        check_fields(data, cls._TYPES, where, required)
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class TrainResult:
    """A finished run: the task (ready to save), the trained model and the record."""

    task: Task
    model: TaskModel
    record: RunRecord

    @property
    def accuracy(self) -> float:
        """Validation accuracy after the last epoch."""
        return self.record.val_accuracy

    @property
    def best_accuracy(self) -> float:
        """The best validation accuracy of any epoch."""
        return self.record.best_val_accuracy
