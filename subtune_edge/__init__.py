"""subtune-edge: SubTune timm backbones per task, ship every task in one fused engine.

The public API; everything else is an implementation detail that may move.
"""

from .backbone import FAMILIES, Backbone, BackboneSpec, create_backbone, load_backbone, split_model
from .cost import build_fused, plan_cost, unit_costs
from .data import DataSpec, TaskData, from_arrays, image_folder, load_data
from .errors import (
    BackboneError,
    DataError,
    ExportError,
    RuntimeMissingError,
    SubtuneError,
    TaskFileError,
    WeightsError,
)
from .multitask import MultiTaskModel, SharingPlan, StackedMultiTaskModel, TaskModel, backbone_for_tasks
from .runtime import ExportedModel, load_export
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
)
from .search.latency import LatencyTable
from .synthetic import synthetic_task
from .task import Task, load_task, load_tasks, make_task, save_task
from .train import RunResult, RunSpec, TrainConfig, TrainResult, execute_run, train

__all__ = [
    "FAMILIES", "Backbone", "BackboneSpec", "create_backbone", "load_backbone", "split_model",
    "build_fused", "plan_cost", "unit_costs",
    "BackboneError", "DataError", "ExportError", "RuntimeMissingError", "SubtuneError", "TaskFileError",
    "WeightsError",
    "LatencyTable", "DataSpec", "TaskData", "from_arrays", "image_folder", "load_data",
    "LocalExecutor", "ProcessExecutor", "RayExecutor", "RunLog",
    "make_executor",
    "MultiTaskModel", "SharingPlan", "StackedMultiTaskModel", "TaskModel", "backbone_for_tasks",
    "GreedyConfig", "GreedyResult", "Profile", "SearchSetup", "finetuning_profile", "greedy_select", "plot_profile",
    "RunResult", "RunSpec", "TrainConfig", "TrainResult", "execute_run", "train",
    "ExportedModel", "load_export",
    "synthetic_task",
    "Task", "load_task", "load_tasks", "make_task", "save_task",
]
__version__ = "0.1.0"
