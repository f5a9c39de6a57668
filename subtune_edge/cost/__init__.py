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

from .measure import (
                      build_fused,
                      count_flops,
                      ideal_ratio,
                      plan_cost,
                      plan_from_json,
                      size_of,
                      unique_tensors,
                      unit_costs,
                      weight_bytes,
)
from .records import BranchCost, Cost, PlanCost, TrunkCost, UnitCost
from .rules import NECK_POOL, branch_flops, branch_units

__all__ = ["NECK_POOL", "BranchCost", "Cost", "PlanCost", "TrunkCost", "UnitCost", "branch_flops", "branch_units",
           "build_fused", "count_flops", "ideal_ratio", "plan_cost", "plan_from_json", "size_of", "unique_tensors",
           "unit_costs", "weight_bytes"]
