"""The branch rule: what a task's branch runs and costs, asked by plans, selection budgets and device tables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ..errors import BackboneError

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
