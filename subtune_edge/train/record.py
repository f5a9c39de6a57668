"""What a training run reports: :class:`RunRecord` (stored in the task file) and :class:`TrainResult`.

The record is the task file's ``training`` metadata; its JSON form is unchanged from the earlier
string-keyed dict, so task files written before read back the same. Its fields are
``task.schema.json``'s ``$defs/run_record``, which the task file's reader applies to every
trained task (a record of mode linear-probe, subtune, full-finetune or siamese).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import SubtuneError
from ..multitask import TaskModel
from ..schema import FileFormat, validate
from ..task import Task

#: a run record on its own: the part of the task file's schema that a trained task's ``training`` is
RUN_RECORD = FileFormat("task.schema.json#/$defs/run_record", SubtuneError, "re-train the task")


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
        """A record from its JSON: the ``training`` metadata of a task file of a training run.

        The task file's reader checked it against ``task.schema.json`` (``$defs/run_record``); a
        record built elsewhere is checked against the same definition here.

        Raises:
            SubtuneError: naming ``where``, the field and what was expected.
        """
        validate(data, RUN_RECORD, where)
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
