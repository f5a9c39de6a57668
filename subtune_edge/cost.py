"""Parameters, bytes and FLOPs per unit and per sharing plan.

FLOPs come from ``torch.utils.flop_counter`` (matmuls and convolutions, counted as 2 per MAC),
measured on a batch of one at the task's input size, so they are the same numbers torch reports
and cover any model the backbone adapters split. The *ideal ratio* fused/separate is what a
perfectly compute-bound runtime would save; the benchmark puts measured latency beside it.

The two rules every cost in the project follows live here and in :mod:`subtune_edge.multitask`:
:func:`branch_units` (what a task's branch runs) and :func:`~subtune_edge.multitask.trunk_end`
(how deep the shared trunk runs); :func:`unique_tensors` is the one way weights are counted
(each storage once, so shared frozen weights count once).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .backbone import Backbone
from .errors import BackboneError, SubtuneError
from .multitask import MultiTaskModel, SharingPlan, StackedMultiTaskModel, TaskModel
from .task import Task

NECK_POOL = "neck+pool"  # the name of the neck + pool part in :func:`unit_costs`


def branch_units(unit_names: Sequence[str], tuned_units: Iterable[str]) -> list[str]:
    """The units a task's branch runs: every unit from its first tuned one to the end.

    This is *the* branch rule of the sharing plan. A task leaves the shared trunk at its first
    tuned unit and, from there on, must re-run every later unit (tuned or frozen) on its own
    activation; everything before stays shared. Selection budgets, plan costs and device cost
    tables all ask this one function.

    Args:
        unit_names: the backbone's units in model order.
        tuned_units: the units the task tunes (any order).

    Returns:
        The branch's units in model order; empty for a linear probe (no tuned unit).

    Raises:
        BackboneError: a tuned unit is not one of ``unit_names``.
    """
    tuned = set(tuned_units)
    if not tuned:
        return []
    unknown = sorted(tuned.difference(unit_names))
    if unknown:
        raise BackboneError(f"unit '{unknown[0]}' is not one of the backbone's units "
                            f"({', '.join(unit_names[:3])}, ...)")
    first = min(list(unit_names).index(u) for u in tuned)
    return list(unit_names[first:])


def branch_flops(unit_flops: Mapping[str, int], unit_names: Sequence[str], tuned_units: Iterable[str]) -> int:
    """FLOPs of a task's branch without its head: its :func:`branch_units` plus neck and pool.

    A linear probe's branch is the neck and pool alone (on the trunk's end).

    Args:
        unit_flops: FLOPs by part name, as :func:`unit_costs` names them (must hold ``"neck+pool"``).
        unit_names: the backbone's units in model order.
        tuned_units: the units the task tunes.

    Returns:
        The branch's FLOPs at the batch size ``unit_flops`` were counted at.
    """
    return sum(unit_flops[u] for u in branch_units(unit_names, tuned_units)) + unit_flops[NECK_POOL]


@dataclass
class Cost:
    """Parameters, bytes and FLOPs (batch 1) of a part of a model; costs add up."""

    params: int = 0
    bytes: int = 0
    flops: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.params + other.params, self.bytes + other.bytes, self.flops + other.flops)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Cost:
        return cls(int(data["params"]), int(data["bytes"]), int(data["flops"]))


def unique_tensors(module: nn.Module, buffers: bool = True, floating_only: bool = False) -> list[torch.Tensor]:
    """Parameters (and buffers) of ``module``, each storage counted once: shared weights are shared.

    Args:
        module: the module.
        buffers: include buffers (BatchNorm statistics, ...).
        floating_only: leave out integer tensors (BatchNorm's ``num_batches_tracked``), which never
            reach an inference graph.

    Returns:
        One tensor per distinct (storage, offset), in module order.
    """
    seen: set[tuple[int, int]] = set()
    out = []
    for t in [*module.parameters(), *(module.buffers() if buffers else ())]:
        if floating_only and not t.is_floating_point():
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def weight_bytes(module: nn.Module, floating_only: bool = False) -> int:
    """Bytes of ``module``'s unique parameters and buffers (see :func:`unique_tensors`)."""
    return sum(t.numel() * t.element_size() for t in unique_tensors(module, floating_only=floating_only))


def size_of(module: nn.Module) -> Cost:
    """Unique parameters and bytes of ``module`` (FLOPs left at 0: they need an input)."""
    params = sum(t.numel() for t in unique_tensors(module, buffers=False))
    return Cost(params=params, bytes=weight_bytes(module))


def count_flops(fn, *args) -> int:
    """FLOPs of ``fn(*args)`` as ``torch.utils.flop_counter`` counts them (no gradients)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*args)
    return int(counter.get_total_flops())


@dataclass
class UnitCost:
    """One part of the backbone (``stem``, a unit, ``neck+pool``) at batch 1."""

    name: str
    params: int
    bytes: int
    flops: int


def unit_costs(backbone: Backbone, input_size: tuple[int, int] | None = None) -> list[UnitCost]:
    """Cost of the stem, each unit and the neck + pool, in model order, at batch 1.

    Args:
        backbone: the backbone (on the CPU).
        input_size: (height, width); None for the backbone's default.

    Returns:
        ``stem``, every unit, then ``neck+pool`` (:data:`NECK_POOL`).
    """
    h, w = input_size or backbone.data_config["input_size"][1:]
    x = torch.zeros(1, 3, int(h), int(w))
    neck_pool = nn.Sequential(backbone.neck, backbone.pool)
    parts = [("stem", backbone.stem), *backbone.units.items(), (NECK_POOL, neck_pool)]
    out = []
    for name, module in parts:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            y = module(x)
        size = size_of(module)
        out.append(UnitCost(name, size.params, size.bytes, int(counter.get_total_flops())))
        x = y
    return out


@dataclass
class BranchCost:
    """One task's branch: where it starts, what it tunes; params and bytes of what it adds (tuned
    units and head), FLOPs of everything it runs (branch units, neck, pool, head)."""

    start_unit: str | None
    tuned_units: list[str]
    params: int
    bytes: int
    flops: int

    def to_json(self) -> dict:
        return {"start_unit": self.start_unit, "tuned_units": list(self.tuned_units), "params": self.params,
                "bytes": self.bytes, "flops": self.flops}


@dataclass
class TrunkCost:
    """The shared trunk: the stem and ``units``, run once."""

    units: list[str]
    params: int
    bytes: int
    flops: int

    def to_json(self) -> dict:
        return {"units": list(self.units), "params": self.params, "bytes": self.bytes, "flops": self.flops}


@dataclass
class PlanCost:
    """What a sharing plan costs, fused and as separate full models (batch 1), as the manifest stores it.

    Attributes:
        input_size: (height, width) the FLOPs were counted at.
        units: every part of the backbone, in model order.
        trunk: the shared trunk.
        branches: each task's branch, by task name.
        fused: the whole fused module (unique weights, measured FLOPs).
        separate: the sum of one full standalone model per task.
        separate_per_task: each task's standalone model.
        ideal_ratio_flops: fused / separate FLOPs (None without FLOPs).
        ratio_bytes: fused / separate bytes.
    """

    input_size: tuple[int, int]
    units: list[UnitCost]
    trunk: TrunkCost
    branches: dict[str, BranchCost]
    fused: Cost
    separate: Cost
    separate_per_task: dict[str, Cost] = field(default_factory=dict)
    ideal_ratio_flops: float | None = None
    ratio_bytes: float | None = None

    @property
    def total_unit_flops(self) -> int:
        """FLOPs of one full pass of the backbone (stem, every unit, neck and pool)."""
        return sum(u.flops for u in self.units)

    def to_json(self) -> dict:
        return {
            "input_size": [int(v) for v in self.input_size],
            "units": [asdict(u) for u in self.units],
            "trunk": self.trunk.to_json(),
            "branches": {name: b.to_json() for name, b in self.branches.items()},
            "fused": self.fused.to_json(),
            "separate": self.separate.to_json(),
            "separate_per_task": {name: c.to_json() for name, c in self.separate_per_task.items()},
            "ideal_ratio_flops": self.ideal_ratio_flops,
            "ratio_bytes": self.ratio_bytes,
        }

    @classmethod
    def from_json(cls, data: dict) -> PlanCost:
        """Read :meth:`to_json`'s output (e.g. a manifest's ``plan.cost``).

        Raises:
            SubtuneError: ``data`` is not a plan cost.
        """
        try:
            h, w = data["input_size"]
            return cls(
                input_size=(int(h), int(w)),
                units=[UnitCost(str(u["name"]), int(u["params"]), int(u["bytes"]), int(u["flops"]))
                       for u in data["units"]],
                trunk=TrunkCost([str(u) for u in data["trunk"]["units"]], int(data["trunk"]["params"]),
                                int(data["trunk"]["bytes"]), int(data["trunk"]["flops"])),
                branches={str(name): BranchCost(b.get("start_unit"), list(b["tuned_units"]), int(b["params"]),
                                                int(b["bytes"]), int(b["flops"]))
                          for name, b in data["branches"].items()},
                fused=Cost.from_json(data["fused"]), separate=Cost.from_json(data["separate"]),
                separate_per_task={str(n): Cost.from_json(c) for n, c in (data.get("separate_per_task") or {}).items()},
                ideal_ratio_flops=_ratio(data.get("ideal_ratio_flops")), ratio_bytes=_ratio(data.get("ratio_bytes")))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SubtuneError(f"a plan cost is malformed ({type(exc).__name__}: {str(exc)[:80]}); "
                               "re-export to recompute it") from exc


def _ratio(value) -> float | None:
    return None if value is None else float(value)


def plan_from_json(data: dict) -> SharingPlan:
    """A :class:`SharingPlan` and its :class:`PlanCost` read back from a manifest's ``plan``.

    Raises:
        SubtuneError: ``data`` is not a plan.
    """
    plan = SharingPlan.from_json(data)
    if data.get("cost"):
        plan.cost = PlanCost.from_json(data["cost"])
    return plan


def ideal_ratio(plan: SharingPlan, k: int | None = None) -> float | None:
    """FLOPs of the fused graph of the plan's first ``k`` tasks over ``k`` separate full models.

    A k-task export's graph runs the trunk only as deep as those k tasks need
    (:meth:`SharingPlan.first_tasks`), so this is read from the per-unit costs, not the fused total.

    Args:
        plan: a plan with its cost (:func:`plan_cost` or :func:`plan_from_json`).
        k: how many tasks, in plan order; None for all.

    Returns:
        The ratio, or None when the plan has no cost.
    """
    cost = plan.cost
    if cost is None or not cost.units:
        return None
    sub = plan.first_tasks(len(plan.branches) if k is None else k)
    flops = {u.name: u.flops for u in cost.units}
    fused = flops["stem"] + sum(flops[u] for u in sub.trunk_units)
    fused += sum(cost.branches[b.task].flops for b in sub.branches)
    separate = sum(cost.separate_per_task[b.task].flops for b in sub.branches)
    return fused / separate if separate else None


def plan_cost(backbone: Backbone, tasks: list[Task], plan: SharingPlan, fused: MultiTaskModel,
              input_size: tuple[int, int] | None = None) -> PlanCost:
    """Trunk, per-branch, fused and separate costs for ``plan``, and the ideal ratios.

    Args:
        backbone: the tasks' backbone.
        tasks: the tasks, in plan order.
        plan: their sharing plan; its ``cost`` is set to the result.
        fused: the fused module built for ``plan``.
        input_size: (height, width); None for the backbone's default.

    Returns:
        The plan's cost (also stored as ``plan.cost``).
    """
    h, w = input_size or backbone.data_config["input_size"][1:]
    x = torch.zeros(1, 3, int(h), int(w))
    units = unit_costs(backbone, (h, w))
    by_name = {u.name: u for u in units}
    trunk = Cost()
    for name in ["stem", *plan.trunk_units]:
        u = by_name[name]
        trunk += Cost(u.params, u.bytes, u.flops)
    flops_of = {u.name: u.flops for u in units}
    branches = {}
    for t, bp in zip(tasks, plan.branches):
        n_head = t.head_in_features * t.num_classes + t.num_classes
        added = Cost(n_head, 4 * n_head, 2 * t.head_in_features * t.num_classes)
        for name in t.tuned_units:
            added += Cost(by_name[name].params, by_name[name].bytes, 0)
        flops = added.flops + branch_flops(flops_of, plan.unit_names, t.tuned_units)
        branches[t.name] = BranchCost(bp.start_unit, list(bp.tuned_units), added.params, added.bytes, flops)
    fused_size = size_of(fused)
    fused_cost = Cost(fused_size.params, fused_size.bytes, count_flops(fused, x))
    separate = Cost()
    per_task_full = {}
    for t in tasks:
        model = TaskModel.from_task(backbone, t)
        c = size_of(model)
        c.flops = count_flops(model, x)
        per_task_full[t.name] = c
        separate += c
    plan.cost = PlanCost(
        input_size=(int(h), int(w)), units=units,
        trunk=TrunkCost(list(plan.trunk_units), trunk.params, trunk.bytes, trunk.flops),
        branches=branches, fused=fused_cost, separate=separate, separate_per_task=per_task_full,
        ideal_ratio_flops=fused_cost.flops / separate.flops if separate.flops else None,
        ratio_bytes=fused_cost.bytes / separate.bytes if separate.bytes else None)
    return plan.cost


def build_fused(backbone: Backbone, tasks: list[Task], input_size: tuple[int, int] | None = None,
                with_cost: bool = True, stacked: bool = False) -> MultiTaskModel:
    """The fused module for ``tasks`` with its plan (and, by default, the plan's costs).

    Args:
        backbone: the tasks' backbone (see :func:`~subtune_edge.multitask.backbone_for_tasks`).
        tasks: the tasks; outputs come in this order.
        input_size: (height, width) for the FLOPs; None for the backbone's default.
        with_cost: compute ``fused.plan.cost`` (a :class:`PlanCost`; one extra pass per task).
        stacked: run frozen units shared by several branches once on their batch-concatenated
            activations (:class:`~subtune_edge.multitask.StackedMultiTaskModel`): same outputs, fewer kernels.

    Returns:
        The fused module (eval mode, no gradients).

    Raises:
        TaskFileError: a task does not fit ``backbone``.
    """
    fused = (StackedMultiTaskModel if stacked else MultiTaskModel)(backbone, tasks)
    if with_cost:
        plan_cost(backbone, tasks, fused.plan, fused, input_size)
    return fused
