"""Counting: unique weights, FLOPs per unit, and the cost of a sharing plan."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..backbone import Backbone
from ..errors import ExportError
from ..multitask import GroupedMultiTaskModel, MultiTaskModel, SharingPlan, StackedMultiTaskModel, TaskModel
from ..task import Task
from .records import BranchCost, Cost, PlanCost, TrunkCost, UnitCost
from .rules import NECK_POOL, branch_flops


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


def chain_costs(parts, x: torch.Tensor) -> list[UnitCost]:
    """Cost of each module of a chain, each run on the output of the one before it (at ``x``'s batch).

    The one walker behind :func:`unit_costs` (a backbone's units) and :func:`task_unit_costs` (a task's
    own copies, at their pruned widths): a unit's FLOPs depend on the activation it receives.

    Args:
        parts: (name, module) pairs in the order they run.
        x: the first module's input.

    Returns:
        One :class:`UnitCost` per part, in order.
    """
    out = []
    for name, module in parts:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            x = module(x)
        size = size_of(module)
        out.append(UnitCost(name, size.params, size.bytes, int(counter.get_total_flops())))
    return out


def unit_costs(backbone: Backbone, input_size: tuple[int, int] | None = None) -> list[UnitCost]:
    """Cost of the stem, each unit and the neck + pool, in model order, at batch 1.

    Args:
        backbone: the backbone (on the CPU).
        input_size: (height, width); None for the backbone's default.

    Returns:
        ``stem``, every unit, then ``neck+pool`` (:data:`NECK_POOL`).
    """
    h, w = input_size or backbone.data_config["input_size"][1:]
    neck_pool = nn.Sequential(backbone.neck, backbone.pool)
    return chain_costs([("stem", backbone.stem), *backbone.units.items(), (NECK_POOL, neck_pool)],
                       torch.zeros(1, 3, int(h), int(w)))


def task_unit_costs(model: TaskModel, x: torch.Tensor) -> dict[str, UnitCost]:
    """Cost of each unit as ``model`` runs it: its tuned copies (at their pruned widths) and the frozen rest.

    Args:
        model: a task's standalone model (CPU, eval).
        x: one input batch (batch 1).

    Returns:
        By unit name, in model order.
    """
    with torch.no_grad():
        h = model.stem(x)
    return {c.name: c for c in chain_costs(zip(model.unit_names, model.units), h)}


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
    branches = {}
    models = {t.name: TaskModel.from_task(backbone, t) for t in tasks}
    for t, bp in zip(tasks, plan.branches):
        own = task_unit_costs(models[t.name], x) if t.pruned else by_name  # a pruned task's units are its own
        flops_of = {u.name: u.flops for u in units} | {n: c.flops for n, c in own.items()}
        n_head = t.head_in_features * t.num_classes + t.num_classes
        added = Cost(n_head, 4 * n_head, 2 * t.head_in_features * t.num_classes)
        for name in t.tuned_units:
            added += Cost(own[name].params, own[name].bytes, 0)
        flops = added.flops + branch_flops(flops_of, plan.unit_names, t.tuned_units)
        branches[t.name] = BranchCost(bp.start_unit, list(bp.tuned_units), added.params, added.bytes, flops)
    fused_size = size_of(fused)
    fused_cost = Cost(fused_size.params, fused_size.bytes, count_flops(fused, x))
    separate = Cost()
    per_task_full = {}
    for t in tasks:
        model = models[t.name]
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
                with_cost: bool = True, stacked: bool = False, grouped: bool = False, strict: bool = True
                ) -> MultiTaskModel:
    """The fused module for ``tasks`` with its plan (and, by default, the plan's costs).

    Args:
        backbone: the tasks' backbone (see :func:`~subtune_edge.multitask.backbone_for_tasks`).
        tasks: the tasks; outputs come in this order.
        input_size: (height, width) for the FLOPs; None for the backbone's default.
        with_cost: compute ``fused.plan.cost`` (a :class:`PlanCost`; one extra pass per task).
        stacked: run frozen units shared by several branches once on their batch-concatenated
            activations (:class:`~subtune_edge.multitask.StackedMultiTaskModel`): same outputs, fewer kernels.
        grouped: run the branches of tasks tuning the same units as one wider network
            (:class:`~subtune_edge.multitask.grouped.GroupedMultiTaskModel`); not with ``stacked``.
        strict: with ``grouped``, refuse tasks that tune the same units at different widths (False:
            group only the tasks that match).

    Returns:
        The fused module (eval mode, no gradients).

    Raises:
        TaskFileError: a task does not fit ``backbone``.
        ExportError: ``grouped`` with ``stacked``, or units that cannot be grouped.
    """
    if grouped and stacked:
        raise ExportError("grouped and stacked branches are two ways to run the branches; choose one ({param} or "
                          "stacked)", param="grouped")
    if grouped:
        fused = GroupedMultiTaskModel(backbone, tasks, strict=strict)
    else:
        fused = (StackedMultiTaskModel if stacked else MultiTaskModel)(backbone, tasks)
    if with_cost:
        plan_cost(backbone, tasks, fused.plan, fused, input_size)
    return fused
