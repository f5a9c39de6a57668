"""subtune-edge: SubTune timm backbones per task, ship every task in one fused engine.

The public API; everything else is an implementation detail that may move. Each name's
docstring says what it takes, returns and raises (``help(subtune_edge.train)``); the layers
behind them are described in ARCHITECTURE.md.
"""

from __future__ import annotations

from .backbone import FAMILIES, Backbone, BackboneSpec, create_backbone, load_backbone, split_model
from .cost import PlanCost, build_fused, plan_cost, unit_costs
from .data import DataSpec, TaskData, from_arrays, image_folder, load_data, read_image
from .errors import (
    BackboneError,
    DataError,
    ExportError,
    RuntimeMissingError,
    SubtuneError,
    TaskFileError,
    WeightsError,
)
from .exporters import ExportOptions, export_tasks
from .multitask import MultiTaskModel, SharingPlan, StackedMultiTaskModel, TaskModel, backbone_for_tasks
from .progress import Event, Progress
from .runtime import ExportedModel, Manifest, load_export, read_manifest
from .search import (
    GreedyConfig,
    GreedyResult,
    LocalExecutor,
    ProcessExecutor,
    Profile,
    RayExecutor,
    RunLog,
    SearchSetup,
    finetuning_profile,
    greedy_select,
    make_executor,
    plot_profile,
    train_chosen,
)
from .search.latency import LatencyTable
from .synthetic import synthetic_task
from .task import Task, load_task, load_tasks, make_task, save_task, validate_task_name
from .train import RunRecord, RunResult, RunSpec, TrainConfig, TrainResult, execute_run, train

__all__ = [
    "FAMILIES", "Backbone", "BackboneSpec", "create_backbone", "load_backbone", "split_model",
    "PlanCost", "build_fused", "plan_cost", "unit_costs",
    "BackboneError", "DataError", "ExportError", "RuntimeMissingError", "SubtuneError", "TaskFileError",
    "WeightsError",
    "Event", "Progress",
    "LatencyTable", "DataSpec", "TaskData", "from_arrays", "image_folder", "load_data", "read_image",
    "LocalExecutor", "ProcessExecutor", "RayExecutor", "RunLog",
    "make_executor",
    "MultiTaskModel", "SharingPlan", "StackedMultiTaskModel", "TaskModel", "backbone_for_tasks",
    "GreedyConfig", "GreedyResult", "Profile", "SearchSetup", "finetuning_profile", "greedy_select", "plot_profile",
    "train_chosen",
    "RunRecord", "RunResult", "RunSpec", "TrainConfig", "TrainResult", "execute_run", "train",
    "ExportOptions", "export_tasks",
    "ExportedModel", "Manifest", "load_export", "read_manifest",
    "synthetic_task",
    "Task", "load_task", "load_tasks", "make_task", "save_task", "validate_task_name",
]
__version__ = "0.1.0"
