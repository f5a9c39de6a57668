"""Searches over training runs: which units to tune, where the runs execute, and what they cost.

``evaluator``  :class:`SearchSetup` and scoring unit sets by runs
``greedy``     greedy selection (the paper's Algorithm 1) under unit / params / FLOPs / latency budgets
``profile``    finetuning profiles
``executor``   :class:`LocalExecutor`, :class:`ProcessExecutor`
``ray``        :class:`RayExecutor` (optional ``dist`` extra)
``factory``    :func:`make_executor`: an executor by name
``runlog``     :class:`RunLog`: the resumable record of every run
``chosen``     :func:`train_chosen`: the final training of a chosen set, reusing a stored run
``latency``    device latency tables, Pareto fronts of accuracy against added cost
"""

from __future__ import annotations

from .chosen import ChosenRun, final_setup, train_chosen
from .evaluator import Evaluator, SearchSetup, SetScore, store_path
from .executor import Executor, LocalExecutor, ProcessExecutor
from .factory import EXECUTOR_KINDS, check_executor_kind, make_executor
from .greedy import GreedyConfig, GreedyResult, SetCost, greedy_select
from .latency import COSTS_FORMAT, LatencyTable, front_report, pareto_front, plot_front, read_cost_table
from .profile import Profile, finetuning_profile, plot_profile, profile_sets
from .ray import RayExecutor, parse_address, require_ray
from .runlog import RunLog, run_all

__all__ = [
    "COSTS_FORMAT", "ChosenRun", "EXECUTOR_KINDS", "Evaluator", "Executor", "GreedyConfig", "GreedyResult",
    "LatencyTable", "LocalExecutor", "ProcessExecutor", "Profile", "RayExecutor", "RunLog", "SearchSetup", "SetCost",
    "SetScore", "check_executor_kind", "final_setup", "finetuning_profile", "front_report", "greedy_select",
    "make_executor", "pareto_front", "parse_address", "plot_front", "plot_profile", "profile_sets", "read_cost_table",
    "require_ray", "run_all", "store_path", "train_chosen",
]
