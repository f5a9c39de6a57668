"""The sharing plan: where each task leaves the shared trunk, and how deep the trunk runs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..backbone import Backbone
from ..errors import SubtuneError
from ..task import Task


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
