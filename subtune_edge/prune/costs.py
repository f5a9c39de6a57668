"""What a pruned unit costs, before any task is trained: for budgets and the accuracy / cost front.

A search that may prune needs to know, for a candidate set, how much cheaper its branch gets. Each
unit is pruned alone (a copy, as the only tuned unit of a throwaway task) at each ratio, and its
parameters and FLOPs are counted. Groups that span two tuned units (an expansion feeding a tuned
``conv_head``, a ResNet stage's residual stream owned by its tuned blocks) are only pruned when the
units are tuned together, so summing per-unit figures over a set is conservative: a real pruned
task of that set costs at most this.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..backbone import Backbone
from ..errors import PruneError
from ..multitask import TaskModel
from .channels import prune_task_model
from .options import PruneConfig

_CACHE: dict[tuple, dict[str, tuple[int, int]]] = {}


def _count(module: torch.nn.Module, x: torch.Tensor) -> tuple[int, int, torch.Tensor]:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        y = module(x)
    return sum(p.numel() for p in module.parameters()), int(counter.get_total_flops()), y


def pruned_unit_costs(backbone: Backbone, ratio: float, input_size: tuple[int, int],
                      config: PruneConfig | None = None) -> dict[str, tuple[int, int]]:
    """(parameters, FLOPs at batch 1) of every unit pruned alone at ``ratio`` (a unit that cannot be: its own).

    Args:
        backbone: the frozen backbone (on the CPU).
        ratio: the pruning ratio.
        input_size: (height, width) the FLOPs are counted at.
        config: the rounding and importance (the ratio is ``ratio``); default :class:`PruneConfig`'s.

    Returns:
        By unit name, what its pruned copy holds and computes.
    """
    config = replace(config or PruneConfig(), ratio=ratio, importance="l1")  # which channels go does not change cost
    key = (backbone.name, backbone.fingerprint, tuple(input_size), config.ratio, config.round_to)
    if key in _CACHE:
        return _CACHE[key]
    x = torch.zeros(1, 3, *input_size)
    with torch.no_grad():
        h = backbone.stem(x)
    out: dict[str, tuple[int, int]] = {}
    for name in backbone.unit_names:
        unit = backbone.units[name]
        params, flops, nxt = _count(unit, h)
        model = TaskModel.for_training(backbone, [name], 2)
        try:
            prune_task_model(model, config, x, backbone.family)
            params, flops, _ = _count(model.units[model.start].eval(), h)
        except PruneError:
            pass  # nothing in it can be narrowed alone: it costs what it costs
        out[name] = (params, flops)
        h = nxt
    _CACHE[key] = out
    return out
