"""Structured pruning of SubTuned branches: the paper's SubTuning + pruning, so each task costs less.

After SubTuning, :func:`prune_task_model` removes a share of the channels of the task's tuned
units where only the task's own tensors carry them (:mod:`.channels` says which), and training
finetunes the narrower branch for a few epochs (``train(..., prune=PruneConfig(...))``). The task
file then holds the narrower tensors and a ``pruned`` record; every loader rebuilds the units at
those widths (:func:`subtune_edge.multitask.resize.resize_to_state`).
"""

from .channels import PruneRecord, prune_task_model
from .costs import pruned_unit_costs
from .options import AUTO_RATIOS, IMPORTANCES, MAX_RATIO, PruneConfig, check_ratio

__all__ = ["AUTO_RATIOS", "IMPORTANCES", "MAX_RATIO", "PruneConfig", "PruneRecord", "check_ratio",
           "prune_task_model", "pruned_unit_costs"]
