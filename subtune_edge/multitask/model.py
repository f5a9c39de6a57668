"""One task as a standalone model: what training optimises and what a separate copy of the task is."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..backbone import Backbone
from ..task import Task
from .resize import resize_to_state


def tuned_copy(backbone: Backbone, unit: str, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A trainable copy of a frozen unit, optionally loaded with a task's weights.

    Args:
        backbone: the frozen backbone.
        unit: the unit's name.
        state: the task's tensors for the unit (``strict`` load; a pruned task's narrower tensors
            rebuild the copy at their widths, :func:`resize_to_state`), or None to start from the frozen ones.

    Returns:
        A deep copy of the unit with gradients enabled.
    """
    module = copy.deepcopy(backbone.units[unit])
    if state is not None:
        resize_to_state(module, state)
    for p in module.parameters():
        p.requires_grad_(True)
    return module


def new_head(in_features: int, num_classes: int) -> nn.Linear:
    """A new linear head, initialised small (as the paper code does) so early steps stay stable."""
    head = nn.Linear(in_features, num_classes)
    nn.init.zeros_(head.bias)
    nn.init.normal_(head.weight, std=0.01)
    return head


class TaskModel(nn.Module):
    """The backbone with one task's tuned units and head: what training optimises and what a
    separate, standalone copy of the task is.

    Frozen parts are the backbone's own modules (no copies) and stay in eval mode whatever
    ``train()`` says, so frozen BatchNorm statistics never move.

    Args:
        backbone: the frozen backbone.
        tuned: the task's trainable unit copies by unit name.
        head: the task's head.
        siamese: the head sees tuned and frozen features side by side.

    Attributes:
        start: index of the first tuned unit, where the branch leaves the frozen trunk (L for a
            linear probe); the same name as :attr:`BranchPlan.start`.
    """

    def __init__(self, backbone: Backbone, tuned: dict[str, nn.Module], head: nn.Linear, siamese: bool = False):
        super().__init__()
        self.unit_names = backbone.unit_names
        self.tuned_names = [u for u in self.unit_names if u in tuned]
        self.start = self.unit_names.index(self.tuned_names[0]) if self.tuned_names else len(self.unit_names)
        self.siamese = siamese
        self.stem, self.neck, self.pool = backbone.stem, backbone.neck, backbone.pool
        self.units = nn.ModuleList([tuned.get(n, backbone.units[n]) for n in self.unit_names])
        # The frozen path from the branch point, for the Siamese head's second half.
        self.frozen_tail = nn.ModuleList([backbone.units[n] for n in self.unit_names[self.start:]]) \
            if siamese else nn.ModuleList()
        self.head = head

    @classmethod
    def from_task(cls, backbone: Backbone, task: Task) -> TaskModel:
        """The standalone model of a saved task (eval mode).

        Args:
            backbone: the frozen backbone the task was trained on.
            task: the task.

        Returns:
            The task's model.

        Raises:
            TaskFileError: the task does not fit ``backbone`` (see :meth:`Task.check_backbone`).
        """
        task.check_backbone(backbone)
        tuned = {u: tuned_copy(backbone, u, task.unit_state(u)) for u in task.tuned_units}
        head = nn.Linear(task.head_in_features, task.num_classes)
        head.load_state_dict(task.head_state())
        return cls(backbone, tuned, head, task.siamese).eval()

    @classmethod
    def for_training(cls, backbone: Backbone, units: list[str], num_classes: int, siamese: bool = False) -> TaskModel:
        """A new task model tuning ``units`` (copies of the frozen ones) with a new head."""
        tuned = {u: tuned_copy(backbone, u) for u in units}
        head = new_head(backbone.num_features * (2 if siamese else 1), num_classes)
        return cls(backbone, tuned, head, siamese)

    def trainable_modules(self) -> dict[str, nn.Module]:
        """The modules training updates (tuned units by name, and ``head``); what a task file stores."""
        mods = {n: self.units[self.unit_names.index(n)] for n in self.tuned_names}
        mods["head"] = self.head
        return mods

    def train(self, mode: bool = True) -> TaskModel:
        super().train(False)
        for module in self.trainable_modules().values():
            module.train(mode)
        self.training = mode
        return self

    def forward_prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen part before the first tuned unit; never needs gradients, so none are kept."""
        with torch.no_grad():
            x = self.stem(x)
            for unit in self.units[:self.start]:
                x = unit(x)
        return x

    def forward_branch(self, h: torch.Tensor) -> torch.Tensor:
        """From the branch point's activation to the logits (all the gradients live here)."""
        x = h
        for unit in self.units[self.start:]:
            x = unit(x)
        features = self.pool(self.neck(x))
        if self.siamese:
            with torch.no_grad():
                frozen = h
                for unit in self.frozen_tail:
                    frozen = unit(frozen)
                frozen = self.pool(self.neck(frozen))
            features = torch.cat([features, frozen], dim=1)
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_branch(self.forward_prefix(x))
