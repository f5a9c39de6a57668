"""subtune-edge: SubTune timm backbones per task, ship every task in one fused engine.

The public API; everything else is an implementation detail that may move.
"""

from .backbone import FAMILIES, Backbone, BackboneSpec, create_backbone, load_backbone, split_model
from .cost import build_fused, plan_cost, unit_costs
from .errors import (
    BackboneError,
    DataError,
    ExportError,
    RuntimeMissingError,
    SubtuneError,
    TaskFileError,
    WeightsError,
)
from .multitask import MultiTaskModel, SharingPlan, TaskModel, backbone_for_tasks
from .runtime import ExportedModel, load_export
from .synthetic import synthetic_task
from .task import Task, load_task, load_tasks, make_task, save_task

__all__ = [
    "FAMILIES", "Backbone", "BackboneSpec", "create_backbone", "load_backbone", "split_model",
    "build_fused", "plan_cost", "unit_costs",
    "BackboneError", "DataError", "ExportError", "RuntimeMissingError", "SubtuneError", "TaskFileError",
    "WeightsError",
    "MultiTaskModel", "SharingPlan", "TaskModel", "backbone_for_tasks",
    "ExportedModel", "load_export",
    "synthetic_task",
    "Task", "load_task", "load_tasks", "make_task", "save_task",
]
__version__ = "0.1.0"
