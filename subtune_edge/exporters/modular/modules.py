"""The modules a modular export is cut into (trunk, branch) and the plan of the cut (which taps)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from subtune_edge.backbone import Backbone
from subtune_edge.multitask import TaskModel
from subtune_edge.runtime.modular_layout import FEATURES_TAP, tap_name


# -- the modules ----------------------------------------------------------------------------------
class TrunkModule(nn.Module):
    """Stem and the shared frozen units once; one output per tap, shallowest first.

    Args:
        backbone: the frozen backbone.
        depths: per tap, the number of units before it (``len(units) + 1`` for ``tap.features``).
    """

    def __init__(self, backbone: Backbone, depths: Sequence[int]):
        super().__init__()
        n = len(backbone.unit_names)
        self.depths = sorted(depths)
        self.features = self.depths[-1] > n
        deepest = n if self.features else self.depths[-1]
        self.stem, self.neck, self.pool = backbone.stem, backbone.neck, backbone.pool
        self.units = nn.ModuleList([backbone.units[u] for u in backbone.unit_names[:deepest]])
        self.num_units = n

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.stem(x)
        taps = {0: h}
        for i, unit in enumerate(self.units):
            h = unit(h)
            taps[i + 1] = h
        if self.features:
            taps[self.num_units + 1] = self.pool(self.neck(h))
        return tuple(taps[d] for d in self.depths)


class BranchModule(nn.Module):
    """One task from its tap(s) to its logits, as the fused module computes it.

    ``forward(tap)`` for a SubTuned task, ``forward(features)`` for a linear probe (its head alone),
    ``forward(tap, features)`` for a Siamese task (its own features beside the frozen ones).
    """

    def __init__(self, model: TaskModel):
        super().__init__()
        self.start, self.siamese = model.start, model.siamese
        self.probe = model.start == len(model.unit_names)
        self.units = nn.ModuleList(list(model.units)[model.start:])
        self.neck, self.pool, self.head = model.neck, model.pool, model.head

    def forward(self, h: torch.Tensor, frozen: torch.Tensor | None = None) -> torch.Tensor:
        if self.probe:
            return self.head(h)
        for unit in self.units:
            h = unit(h)
        features = self.pool(self.neck(h))
        if self.siamese:
            features = torch.cat([features, frozen], dim=1)
        return self.head(features)


# -- the plan of the cut --------------------------------------------------------------------------
def branch_taps(unit_names: Sequence[str], tuned_units: Sequence[str], siamese: bool) -> list[str]:
    """The taps a task's branch reads: ``tap.<first tuned unit>`` and/or ``tap.features``."""
    first = next((u for u in unit_names if u in set(tuned_units)), None)
    if first is None:
        return [FEATURES_TAP]
    return [tap_name(first), FEATURES_TAP] if siamese else [tap_name(first)]


def tap_depth(unit_names: Sequence[str], tap: str) -> int:
    """Units before ``tap`` (``len(unit_names) + 1`` for the pooled features)."""
    if tap == FEATURES_TAP:
        return len(unit_names) + 1
    return list(unit_names).index(tap[len("tap."):])


def ordered_taps(unit_names: Sequence[str], taps) -> list[str]:
    return sorted(set(taps), key=lambda t: tap_depth(unit_names, t))
