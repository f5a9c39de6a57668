"""One task as a standalone model, many tasks as one fused module, and the plan that links them.

A task leaves the frozen trunk at its first tuned unit ``f_t``. The fused module runs the stem and
units ``u0 .. u(T-1)`` once, where ``T = max f_t`` (``L`` when a task is Siamese or a linear probe,
as those need the frozen features at the end), keeping the activation at each ``f_t``; each task's
branch then runs ``u(f_t) .. u(L-1)`` with its tuned copies and the *same* frozen unit objects
as everyone else, then the shared neck and pool, then its own head.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .backbone import Backbone
from .task import Task


def tuned_copy(backbone: Backbone, unit: str, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A trainable copy of a frozen unit, optionally loaded with a task's weights."""
    module = copy.deepcopy(backbone.units[unit])
    if state is not None:
        module.load_state_dict(state, strict=True)
    for p in module.parameters():
        p.requires_grad_(True)
    return module


def new_head(in_features: int, num_classes: int) -> nn.Linear:
    head = nn.Linear(in_features, num_classes)
    nn.init.zeros_(head.bias)
    nn.init.normal_(head.weight, std=0.01)
    return head


class TaskModel(nn.Module):
    """The backbone with one task's tuned units and head: what training optimises and what a
    separate, standalone copy of the task is.

    Frozen parts are the backbone's own modules (no copies) and stay in eval mode whatever
    ``train()`` says, so frozen BatchNorm statistics never move.
    """

    def __init__(self, backbone: Backbone, tuned: dict[str, nn.Module], head: nn.Linear, siamese: bool = False):
        super().__init__()
        self.unit_names = backbone.unit_names
        self.tuned_names = [u for u in self.unit_names if u in tuned]
        self.first = self.unit_names.index(self.tuned_names[0]) if self.tuned_names else len(self.unit_names)
        self.siamese = siamese
        self.stem, self.neck, self.pool = backbone.stem, backbone.neck, backbone.pool
        self.units = nn.ModuleList([tuned.get(n, backbone.units[n]) for n in self.unit_names])
        # The frozen path from the branch point, for the Siamese head's second half.
        self.frozen_tail = nn.ModuleList([backbone.units[n] for n in self.unit_names[self.first:]]) \
            if siamese else nn.ModuleList()
        self.head = head

    @classmethod
    def from_task(cls, backbone: Backbone, task: Task) -> TaskModel:
        task.check_backbone(backbone)
        tuned = {u: tuned_copy(backbone, u, task.unit_state(u)) for u in task.tuned_units}
        head = nn.Linear(task.head_in_features, task.num_classes)
        head.load_state_dict(task.head_state())
        return cls(backbone, tuned, head, task.siamese).eval()

    @classmethod
    def for_training(cls, backbone: Backbone, units: list[str], num_classes: int, siamese: bool = False) -> TaskModel:
        tuned = {u: tuned_copy(backbone, u) for u in units}
        head = new_head(backbone.num_features * (2 if siamese else 1), num_classes)
        return cls(backbone, tuned, head, siamese)

    def trainable_modules(self) -> dict[str, nn.Module]:
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
            for unit in self.units[:self.first]:
                x = unit(x)
        return x

    def forward_branch(self, h: torch.Tensor) -> torch.Tensor:
        """From the branch point's activation to the logits (all the gradients live here)."""
        x = h
        for unit in self.units[self.first:]:
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
    task: str
    start: int                      # index of the first tuned unit; L for a linear probe
    start_unit: str | None
    tuned_units: list[str]
    siamese: bool


@dataclass
class SharingPlan:
    """Where each task leaves the shared trunk; ``cost`` is filled by :func:`subtune_edge.cost.plan_cost`."""

    backbone: str
    unit_names: list[str]
    trunk_end: int
    branches: list[BranchPlan]
    cost: dict = field(default_factory=dict)

    @classmethod
    def build(cls, backbone: Backbone, tasks: list[Task]) -> SharingPlan:
        n = len(backbone.unit_names)
        branches = []
        for t in tasks:
            start = backbone.unit_index(t.tuned_units[0]) if t.tuned_units else n
            branches.append(BranchPlan(t.name, start, backbone.unit_names[start] if start < n else None,
                                       list(t.tuned_units), t.siamese))
        needs_end = any(b.siamese or b.start == n for b in branches)
        trunk_end = n if needs_end else max(b.start for b in branches)
        return cls(backbone.name, backbone.unit_names, trunk_end, branches)

    @property
    def trunk_units(self) -> list[str]:
        return self.unit_names[:self.trunk_end]

    def to_json(self) -> dict:
        return asdict(self)


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
            raise ValueError("a multi-task model needs at least one task")
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

    Refuses, naming the odd task, tasks of different backbones or different frozen weights, since
    they cannot share a trunk.
    """
    from .backbone import BackboneSpec, load_backbone
    from .errors import TaskFileError

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
    spec = BackboneSpec(first.backbone.model_name, weights or first.backbone.weights, first.backbone.model_args)
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
