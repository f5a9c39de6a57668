"""One task as a standalone model, many tasks as one fused module, and the plan that links them.

A task leaves the frozen trunk at its first tuned unit ``f_t``. The fused module runs the stem and
units ``u0 .. u(T-1)`` once, where ``T = max f_t`` (``L`` when a task is Siamese or a linear probe,
as those need the frozen features at the end), keeping the activation at each ``f_t``; each task's
branch then runs ``u(f_t) .. u(L-1)`` with its tuned copies and the *same* frozen unit objects
as everyone else, then the shared neck and pool, then its own head.
"""

from .fused import MultiTaskModel, StackedMultiTaskModel, backbone_for_tasks, weights_for_tasks
from .grouped import GroupedMultiTaskModel
from .model import TaskModel, new_head, tuned_copy
from .plan import BranchPlan, SharingPlan, trunk_end

__all__ = ["BranchPlan", "GroupedMultiTaskModel", "MultiTaskModel", "SharingPlan", "StackedMultiTaskModel", "TaskModel",
           "backbone_for_tasks", "new_head", "trunk_end", "tuned_copy", "weights_for_tasks"]
