"""Many tasks as one fused module: the trunk once, one branch per task, frozen weights stored once."""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..backbone import Backbone, BackboneSpec, load_backbone
from ..errors import TaskFileError, WeightsError
from ..task import Task
from ..weights import SPECS
from .model import tuned_copy
from .plan import SharingPlan

log = logging.getLogger(__name__)


class _Branch(nn.Module):
    def __init__(self, start: int, units: list[nn.Module], head: nn.Linear, siamese: bool):
        super().__init__()
        self.start, self.siamese = start, siamese
        self.units = nn.ModuleList(units)
        self.head = head


class MultiTaskModel(nn.Module):
    """All tasks in one module: ``forward(images)`` returns one output per task, in task order.

    Frozen units appear once as objects (shared by trunk and branches), so ``named_parameters()``
    and an exported graph hold each frozen weight once.

    Args:
        backbone: the frozen backbone every task was trained on.
        tasks: the tasks; outputs come in this order.

    Attributes:
        plan: the :class:`SharingPlan` (its ``cost`` is filled by :func:`subtune_edge.cost.build_fused`).
        task_names: the output names, in order.

    Raises:
        TaskFileError: no tasks, or a task that does not fit ``backbone``.
    """

    def __init__(self, backbone: Backbone, tasks: list[Task]):
        super().__init__()
        if not tasks:
            raise TaskFileError("a multi-task model needs at least one task", param="tasks")
        for t in tasks:
            t.check_backbone(backbone)
        self.plan = SharingPlan.build(backbone, tasks)
        self.task_names = [t.name for t in tasks]
        self.num_units = len(backbone.unit_names)
        self.stem, self.neck, self.pool = backbone.stem, backbone.neck, backbone.pool
        self.trunk = nn.ModuleList([backbone.units[n] for n in self.plan.trunk_units])
        branches = []
        for t, bp in zip(tasks, self.plan.branches):
            units = [tuned_copy(backbone, n, t.unit_state(n)) if n in t.tuned_units else backbone.units[n]
                     for n in backbone.unit_names[bp.start:]]
            head = nn.Linear(t.head_in_features, t.num_classes)
            head.load_state_dict(t.head_state())
            branches.append(_Branch(bp.start, units, head, t.siamese))
        self.branches = nn.ModuleList(branches)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def run_trunk(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """The shared trunk, once: activation at every depth a branch may start from."""
        h = self.stem(x)
        taps = {0: h}
        for i, unit in enumerate(self.trunk):
            h = unit(h)
            taps[i + 1] = h
        return taps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One logits tensor per task, in task order."""
        taps = self.run_trunk(x)
        frozen_features = None
        outputs = []
        for branch in self.branches:
            logits, frozen_features = self.run_branch(branch, taps, frozen_features)
            outputs.append(logits)
        return tuple(outputs)

    def run_branch(self, branch: nn.Module, taps: dict[int, torch.Tensor],
                   frozen_features: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One plain branch's logits from the trunk's taps, and the frozen features (computed once, when needed)."""
        if branch.start == self.num_units or branch.siamese:
            if frozen_features is None:
                frozen_features = self.pool(self.neck(taps[self.num_units]))
        if branch.start == self.num_units:
            features = frozen_features
        else:
            z = taps[branch.start]
            for unit in branch.units:
                z = unit(z)
            features = self.pool(self.neck(z))
            if branch.siamese:
                features = torch.cat([features, frozen_features], dim=1)
        return branch.head(features), frozen_features


def weights_for_tasks(tasks: list[Task], weights: str | None = None) -> str:
    """The weights source to build the tasks' backbone with: the caller's, or the tasks' own named one.

    A task file is data: it may name the timm hub, ``random`` or ``offline`` weights, but a weights
    *file* recorded in it is never opened unless the caller passes it again, so a shared task file
    cannot make this process read a path of its choosing.

    Args:
        tasks: the tasks (the first one's record is used; :func:`backbone_for_tasks` checks they agree).
        weights: the caller's weights source, or None.

    Returns:
        ``weights`` when given, else the tasks' recorded source when it is timm, random or offline.

    Raises:
        WeightsError: the tasks were trained on a weights file and ``weights`` is None.
    """
    if weights is not None:
        return weights
    if not tasks:
        raise TaskFileError("give at least one task", param="tasks")
    recorded = tasks[0].backbone.weights
    if recorded not in SPECS:
        raise WeightsError(f"task '{tasks[0].name}' was trained on the weights file {recorded[:80]}; a task file "
                           "never opens a file by itself: pass that file again as {param}", param="weights")
    return recorded


def backbone_for_tasks(tasks: list[Task], weights: str | None = None) -> Backbone:
    """The one backbone all ``tasks`` run on, with the weights they were trained on.

    Weights come from :func:`weights_for_tasks`: a weights file recorded in a task file is never
    opened unless the caller passes it again as ``weights``.

    Args:
        tasks: the tasks, all on one backbone with one set of frozen weights.
        weights: the weights source; None takes the tasks' own when it is timm, random or offline.

    Returns:
        The backbone, checked against every task.

    Raises:
        TaskFileError: tasks of different backbones or different frozen weights (naming the odd task),
            or a task that does not fit the weights.
        WeightsError: the tasks were trained on a weights file and ``weights`` is not given.
    """
    if not tasks:
        raise TaskFileError("give at least one task", param="tasks")
    first = tasks[0]
    for t in tasks[1:]:
        if t.backbone.model_name != first.backbone.model_name or t.backbone.model_args != first.backbone.model_args:
            raise TaskFileError(
                f"task '{t.name}' uses backbone '{t.backbone.model_name}' {t.backbone.model_args or ''} but "
                f"'{first.name}' uses '{first.backbone.model_name}' {first.backbone.model_args or ''}; "
                "tasks in one export must share one backbone")
        if t.fingerprint != first.fingerprint:
            raise TaskFileError(
                f"task '{t.name}' was trained on other {t.backbone.model_name} weights than '{first.name}' "
                f"(fingerprint {t.fingerprint[:8]}… != {first.fingerprint[:8]}…); tasks in one export must "
                "share the same frozen weights")
    weights = weights_for_tasks(tasks, weights)
    spec = BackboneSpec(first.backbone.model_name, weights, first.backbone.model_args)
    log.debug("loading %s with %s weights for %d tasks", spec.model_name, weights, len(tasks))
    backbone = load_backbone(spec)
    for t in tasks:
        t.check_backbone(backbone)
    return backbone


class StackedMultiTaskModel(MultiTaskModel):
    """The fused module with the paper's deployment trick for frozen units after branch points.

    Where several branches run the *same* frozen unit at the same depth, their activations are
    concatenated along the batch axis and the unit runs once on the stack, then the result is split
    back. Outputs equal :class:`MultiTaskModel`'s; what changes is the number of kernel launches
    (fewer, larger), which helps launch-bound GPUs at small batch and does little on CPUs.

    Args and attributes are :class:`MultiTaskModel`'s.
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        taps = self.run_trunk(x)
        n = self.num_units
        frozen_features = None
        if any(b.start == n or b.siamese for b in self.branches):
            frozen_features = self.pool(self.neck(taps[n]))
        active: dict[int, torch.Tensor] = {}  # branch index -> current activation
        for depth in range(min(b.start for b in self.branches), n):
            for j, b in enumerate(self.branches):
                if b.start == depth:
                    active[j] = taps[depth]
            groups: dict[int, list[int]] = {}
            for j in active:
                unit = self.branches[j].units[depth - self.branches[j].start]
                groups.setdefault(id(unit), []).append(j)
            for members in groups.values():
                unit = self.branches[members[0]].units[depth - self.branches[members[0]].start]
                if len(members) == 1:
                    active[members[0]] = unit(active[members[0]])
                    continue
                stacked = unit(torch.cat([active[j] for j in members], dim=0))
                for j, part in zip(members, stacked.split([active[j].shape[0] for j in members], dim=0)):
                    active[j] = part
        outputs = []
        for j, b in enumerate(self.branches):
            if b.start == n:
                features = frozen_features
            else:
                features = self.pool(self.neck(active[j]))
                if b.siamese:
                    features = torch.cat([features, frozen_features], dim=1)
            outputs.append(b.head(features))
        return tuple(outputs)
