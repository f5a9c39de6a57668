"""One task as a standalone model, many tasks as one fused module, and the plan that links them.

A task leaves the frozen trunk at its first tuned unit ``f_t``. The fused module runs the stem and
units ``u0 .. u(T-1)`` once, where ``T = max f_t`` (``L`` when a task is Siamese or a linear probe,
as those need the frozen features at the end), keeping the activation at each ``f_t``; each task's
branch then runs ``u(f_t) .. u(L-1)`` with its tuned copies and the *same* frozen unit objects
as everyone else, then the shared neck and pool, then its own head.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .backbone import Backbone, BackboneSpec, load_backbone
from .errors import SubtuneError, TaskFileError, WeightsError
from .task import Task
from .weights import SPECS

log = logging.getLogger(__name__)


def tuned_copy(backbone: Backbone, unit: str, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A trainable copy of a frozen unit, optionally loaded with a task's weights.

    Args:
        backbone: the frozen backbone.
        unit: the unit's name.
        state: the task's tensors for the unit (``strict`` load), or None to start from the frozen ones.

    Returns:
        A deep copy of the unit with gradients enabled.
    """
    module = copy.deepcopy(backbone.units[unit])
    if state is not None:
        module.load_state_dict(state, strict=True)
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

    @property
    def first(self) -> int:
        """Deprecated name of :attr:`start`, kept until ``train/prefix_cache.py`` reads ``start``."""
        return self.start

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


@dataclass
class BranchPlan:
    """Where one task leaves the shared trunk.

    Attributes:
        task: the task's name.
        start: index of the first tuned unit (L, the number of units, for a linear probe).
        start_unit: that unit's name (None for a linear probe).
        tuned_units: the task's tuned units.
        siamese: the task's head also reads the frozen features at the end.
    """

    task: str
    start: int
    start_unit: str | None
    tuned_units: list[str]
    siamese: bool

    @property
    def needs_trunk_end(self) -> bool:
        """A linear probe reads, and a Siamese head also reads, the frozen features at the end."""
        return self.siamese or self.start_unit is None


def trunk_end(num_units: int, branches: Iterable[BranchPlan]) -> int:
    """How many units the shared trunk runs: to the deepest branch point, or to the end.

    This is *the* trunk rule of the sharing plan: the trunk must produce every branch's input,
    so it runs to the deepest first-tuned unit; a Siamese task or a linear probe needs the frozen
    features at the end, so then it runs to the end.

    Args:
        num_units: the backbone's number of units, L.
        branches: the branches of the tasks that share the trunk.

    Returns:
        T, the trunk runs units ``0 .. T-1``.
    """
    branches = list(branches)
    if not branches or any(b.needs_trunk_end or b.start >= num_units for b in branches):
        return num_units
    return max(b.start for b in branches)


@dataclass
class SharingPlan:
    """Where each task leaves the shared trunk, and (after :func:`subtune_edge.cost.plan_cost`) what it costs.

    Attributes:
        backbone: the timm model name.
        unit_names: the backbone's units in model order.
        trunk_end: the trunk runs units ``0 .. trunk_end-1`` once (see :func:`trunk_end`).
        branches: one per task, in task order.
        cost: a :class:`subtune_edge.cost.PlanCost`, or None until it is computed.
    """

    backbone: str
    unit_names: list[str]
    trunk_end: int
    branches: list[BranchPlan]
    cost: Any = None

    @classmethod
    def build(cls, backbone: Backbone, tasks: list[Task]) -> SharingPlan:
        """The plan for ``tasks`` on ``backbone``, in task order.

        Raises:
            BackboneError: a task tunes a unit ``backbone`` does not have.
        """
        n = len(backbone.unit_names)
        branches = []
        for t in tasks:
            start = backbone.unit_index(t.tuned_units[0]) if t.tuned_units else n
            branches.append(BranchPlan(t.name, start, backbone.unit_names[start] if start < n else None,
                                       list(t.tuned_units), t.siamese))
        return cls(backbone.name, backbone.unit_names, trunk_end(n, branches), branches)

    @property
    def trunk_units(self) -> list[str]:
        """The units the trunk runs once."""
        return self.unit_names[:self.trunk_end]

    def first_tasks(self, k: int) -> SharingPlan:
        """The plan of the first ``k`` tasks alone (what a k-task export's graph runs); without cost."""
        branches = self.branches[:k]
        return SharingPlan(self.backbone, list(self.unit_names), trunk_end(len(self.unit_names), branches), branches)

    def to_json(self) -> dict:
        """The plan as the manifest stores it (``cost`` is ``{}`` until computed)."""
        return {"backbone": self.backbone, "unit_names": list(self.unit_names), "trunk_end": self.trunk_end,
                "branches": [dict(vars(b), tuned_units=list(b.tuned_units)) for b in self.branches],
                "cost": self.cost.to_json() if self.cost is not None else {}}

    @classmethod
    def from_json(cls, data: dict) -> SharingPlan:
        """Read :meth:`to_json`'s output back, without its cost (:func:`subtune_edge.cost.plan_from_json` reads both).

        Raises:
            SubtuneError: ``data`` is not a plan.
        """
        try:
            branches = [BranchPlan(str(b["task"]), int(b["start"]), b.get("start_unit"), list(b["tuned_units"]),
                                   bool(b["siamese"])) for b in data["branches"]]
            return cls(str(data["backbone"]), [str(u) for u in data["unit_names"]], int(data["trunk_end"]), branches)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SubtuneError(f"a sharing plan is malformed ({type(exc).__name__}: {exc}); re-export") from exc


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
        taps = self.run_trunk(x)
        frozen_features = None
        outputs = []
        for branch in self.branches:
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
            outputs.append(branch.head(features))
        return tuple(outputs)


def backbone_for_tasks(tasks: list[Task], weights: str | None = None) -> Backbone:
    """The one backbone all ``tasks`` run on, with the weights they were trained on.

    A task file is data: it may name the timm hub, ``random`` or ``offline`` weights, which are
    created as named, but a weights *file* recorded in it is never opened unless the caller passes
    it again as ``weights``, so a shared task file cannot make this process read a path.

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
    if weights is None:
        weights = first.backbone.weights
        if weights not in SPECS:
            raise WeightsError(
                f"task '{first.name}' was trained on the weights file {weights[:80]}; a task file never opens a "
                "file by itself: pass that file again as {param}", param="weights")
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
