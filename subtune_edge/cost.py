"""Parameters, bytes and FLOPs per unit and per sharing plan.

FLOPs come from ``torch.utils.flop_counter`` (matmuls and convolutions, counted as 2 per MAC),
measured on a batch of one at the task's input size, so they are the same numbers torch reports
and cover any model the backbone adapters split. The *ideal ratio* fused/separate is what a
perfectly compute-bound runtime would save; the benchmark puts measured latency beside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .backbone import Backbone
from .errors import BackboneError
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
    params: int = 0
    bytes: int = 0
    flops: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.params + other.params, self.bytes + other.bytes, self.flops + other.flops)

    def to_json(self) -> dict:
        return asdict(self)


def unique_tensors(module: nn.Module, buffers: bool = True) -> list[torch.Tensor]:
    """Parameters (and buffers) of ``module``, each storage counted once: shared weights are shared."""
    seen: set[tuple[int, int]] = set()
    out = []
    for t in [*module.parameters(), *(module.buffers() if buffers else ())]:
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def size_of(module: nn.Module) -> Cost:
    params = sum(t.numel() for t in unique_tensors(module, buffers=False))
    return Cost(params=params, bytes=sum(t.numel() * t.element_size() for t in unique_tensors(module)))


def count_flops(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*args)
    return int(counter.get_total_flops())


@dataclass
class UnitCost:
    name: str
    params: int
    bytes: int
    flops: int


def unit_costs(backbone: Backbone, input_size: tuple[int, int] | None = None) -> list[UnitCost]:
    """Cost of the stem, each unit and the neck + pool, in model order, at batch 1."""
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


def plan_cost(backbone: Backbone, tasks: list[Task], plan: SharingPlan, fused: MultiTaskModel,
              input_size: tuple[int, int] | None = None) -> dict:
    """Trunk, per-branch, fused and separate costs for ``plan``, and the ideal ratios."""
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
        head = Cost(t.head_in_features * t.num_classes + t.num_classes,
                    4 * (t.head_in_features * t.num_classes + t.num_classes), 2 * t.head_in_features * t.num_classes)
        tuned = Cost()
        for name in t.tuned_units:
            u = by_name[name]
            tuned += Cost(u.params, u.bytes, 0)
        flops = branch_flops(flops_of, plan.unit_names, t.tuned_units)
        branches[t.name] = {"start_unit": bp.start_unit, "tuned_units": bp.tuned_units,
                            **(tuned + head + Cost(0, 0, flops)).to_json()}
    fused_size = size_of(fused)
    fused_cost = Cost(fused_size.params, fused_size.bytes, count_flops(fused, x))
    separate = Cost()
    per_task_full = {}
    for t in tasks:
        model = TaskModel.from_task(backbone, t)
        c = size_of(model)
        c.flops = count_flops(model, x)
        per_task_full[t.name] = c.to_json()
        separate += c
    plan.cost = {
        "input_size": [int(h), int(w)],
        "units": [asdict(u) for u in units],
        "trunk": {"units": plan.trunk_units, **trunk.to_json()},
        "branches": branches,
        "fused": fused_cost.to_json(),
        "separate": separate.to_json(),
        "separate_per_task": per_task_full,
        "ideal_ratio_flops": fused_cost.flops / separate.flops if separate.flops else None,
        "ratio_bytes": fused_cost.bytes / separate.bytes if separate.bytes else None,
    }
    return plan.cost


def build_fused(backbone: Backbone, tasks: list[Task], input_size: tuple[int, int] | None = None,
                with_cost: bool = True, stacked: bool = False) -> MultiTaskModel:
    """The fused module for ``tasks`` with its plan (and, by default, the plan's costs).

    ``stacked`` runs frozen units shared by several branches once on their batch-concatenated
    activations (:class:`~subtune_edge.multitask.StackedMultiTaskModel`): same outputs, fewer kernels.
    """
    fused = (StackedMultiTaskModel if stacked else MultiTaskModel)(backbone, tasks)
    if with_cost:
        plan_cost(backbone, tasks, fused.plan, fused, input_size)
    return fused
