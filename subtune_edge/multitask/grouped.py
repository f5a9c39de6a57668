"""Grouped branches: tasks that tune the same units run them as one wider network.

The SubTuning paper's deployment trick. ``k`` tasks that leave the trunk at the same unit and
tune the same units differ only in their weights, so their branches can run as one network that
is ``k`` times wider: the shared input is fed once into the first convolution of the branch with
the ``k`` tasks' filters stacked (``out_channels = k * C``), every later convolution is grouped
(``groups = k``, depthwise ``groups = k * C``), and BatchNorm (folded into the convolutions; the
module is eval-only), activations and squeeze-excite act per group. Frozen units inside a grouped
branch run once on the ``k`` groups folded into the batch axis (their weights are not copied), and
the heads are one block-diagonal linear layer, stored as a grouped 1x1 convolution (no zero blocks
are stored). Outputs are split per task. Fewer, larger kernels: the same FLOPs, ``k`` times fewer
launches.

Supported units: timm ResNet ``BasicBlock`` / ``Bottleneck`` (with or without downsample),
EfficientNet / MobileNetV3 ``DepthwiseSeparableConv`` / ``InvertedResidual`` / ``ConvBnAct`` with
``SqueezeExcite``, and the ``conv_head`` units. ConvNeXt is not grouped: its LayerNorm normalises
over the channels of each pixel, so a per-group norm needs a ``[B, k, C, H, W]`` reshape (and a
channels-last permute for its MLP) around every block, which turns "fewer, larger kernels" into
more, smaller ones; its tasks keep plain branches. ViT tasks keep plain branches too.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..backbone import Backbone, families_where
from ..errors import ExportError
from ..task import Task
from .fused import MultiTaskModel
from .regroup import _PerGroup, group_units

__all__ = ["GroupedBranch", "GroupedMultiTaskModel", "group_units", "grouping_key"]

log = logging.getLogger(__name__)


class _GroupedHeads(nn.Module):
    """``k`` linear heads as one block-diagonal layer: a grouped 1x1 convolution, rows padded to the widest."""

    def __init__(self, heads: list[nn.Linear]):
        super().__init__()
        self.k = len(heads)
        self.classes = [h.out_features for h in heads]
        width, fin = max(self.classes), heads[0].in_features
        w = torch.zeros(self.k * width, fin, 1, 1)
        b = torch.zeros(self.k * width)
        for t, h in enumerate(heads):
            w[t * width:t * width + h.out_features, :, 0, 0] = h.weight.detach()
            b[t * width:t * width + h.out_features] = h.bias.detach()
        self.width = width
        self.proj = nn.Conv2d(self.k * fin, self.k * width, 1, groups=self.k)
        self.proj.weight = nn.Parameter(w, requires_grad=False)
        self.proj.bias = nn.Parameter(b, requires_grad=False)

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        y = self.proj(features.reshape(features.shape[0], -1, 1, 1)).reshape(-1, self.k, self.width)
        return [y[:, t, :c] for t, c in enumerate(self.classes)]


class GroupedBranch(nn.Module):
    """The branches of ``k`` tasks with one start and one set of tuned units, as one wider network.

    Args:
        start: index of the common first tuned unit.
        units: per depth from ``start``, the ``k`` tasks' modules (a tuned copy each, or the one
            shared frozen unit ``k`` times).
        heads: the tasks' heads.
        neck: the backbone's neck (identity for the CNN families).
        pool: the backbone's pool.
    """

    def __init__(self, start: int, units: list[list[nn.Module]], heads: list[nn.Linear], neck: nn.Module,
                 pool: nn.Module):
        super().__init__()
        k = len(heads)
        if not isinstance(neck, nn.Identity):
            raise ExportError(f"grouped branches need an identity neck, not {type(neck).__name__}; export without "
                              "{param}", param="grouped")
        self.start, self.k = start, k
        layers = []
        for depth, mods in enumerate(units):
            if all(m is mods[0] for m in mods):  # a frozen unit all k share: once, groups folded into the batch
                if depth == 0:
                    raise ExportError("a grouped branch must start at a tuned unit; export without {param}",
                                      param="grouped")
                layers.append(_PerGroup(mods[0], k))
            else:
                layers.append(group_units(list(mods), shared=depth == 0))
        self.units = nn.Sequential(*layers)
        self.pool = pool
        self.heads = _GroupedHeads(heads)

    def forward(self, h: torch.Tensor) -> list[torch.Tensor]:
        return self.heads(self.pool(self.units(h)))


def unit_widths(task: Task) -> tuple:
    """The shapes of a task's unit tensors and its head's input: what pruning changes, and grouping needs equal."""
    return (*sorted((k, tuple(v.shape)) for k, v in task.tensors.items() if not k.startswith("head.")),
            ("head.in_features", task.head_in_features))


def grouping_key(task: Task) -> tuple | None:
    """Tasks with equal keys can share one grouped branch (same units at the same widths); None for tasks that
    keep a plain branch."""
    if not task.tuned_units or task.siamese:
        return None
    return tuple(task.tuned_units), unit_widths(task)


def _width_label(task: Task) -> str:
    return f"pruned {task.prune_ratio:g}" if task.prune_ratio else "full width"


class GroupedMultiTaskModel(MultiTaskModel):
    """The fused module with grouped branches: tasks tuning the same units run as one wider network.

    Tasks with the same tuned units (hence the same branch point), not Siamese, two or more of
    them, form a group (:class:`GroupedBranch`); every other task keeps its plain branch. Outputs
    equal :class:`MultiTaskModel`'s within float32 rounding (BatchNorm is folded).

    Tasks tuning the same units at different widths (one of them pruned) cannot share a group:
    ``strict`` refuses them, otherwise they form separate groups (or keep plain branches).

    Args:
        backbone: the frozen backbone every task was trained on.
        tasks: the tasks; outputs come in this order.
        strict: refuse tasks that tune the same units at different widths (the user asked for
            grouped branches); False groups only the tasks that match (an automatic choice).

    Attributes:
        groups: the task indices of each group, in task order.
        grouped_tasks: the names of the tasks that run in a group.

    Raises:
        TaskFileError: as :class:`MultiTaskModel`.
        ExportError: a family or layer that cannot be grouped, or (``strict``) tasks of one unit set at
            different widths (param ``grouped``).
    """

    def __init__(self, backbone: Backbone, tasks: list[Task], strict: bool = True):
        super().__init__(backbone, tasks)
        if strict:
            by_units: dict[tuple, Task] = {}
            for t in tasks:
                key = grouping_key(t)
                if key is None:
                    continue
                other = by_units.setdefault(key[0], t)
                if grouping_key(other) != key:
                    raise ExportError(
                        f"tasks '{other.name}' ({_width_label(other)}) and '{t.name}' ({_width_label(t)}) tune the "
                        "same units at different widths, which one grouped branch cannot run; export with {param} "
                        "plain or prune them alike", param="branches")
        by_key: dict[tuple, list[int]] = {}
        for j, t in enumerate(tasks):
            key = grouping_key(t)
            if key is not None:
                by_key.setdefault(key, []).append(j)
        self.groups = [members for members in by_key.values() if len(members) > 1]
        if self.groups and not backbone.family_record.groupable:
            raise ExportError(f"grouped branches are built for {', '.join(families_where(groupable=True))}, not "
                              f"{backbone.family}; export without {{param}}", param="grouped")
        self.grouped_tasks = [tasks[j].name for members in self.groups for j in members]
        grouped = []
        for members in self.groups:
            bs = [self.branches[j] for j in members]
            units = [[b.units[d] for b in bs] for d in range(len(bs[0].units))]
            grouped.append(GroupedBranch(bs[0].start, units, [b.head for b in bs], self.neck, self.pool))
        self.grouped = nn.ModuleList(grouped)
        for members in self.groups:  # the plain copies are not run: drop them, the graph holds the wide ones
            for j in members:
                self.branches[j] = _Dropped(self.branches[j].start)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        log.debug("grouped branches: %s", self.groups)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One logits tensor per task, in task order."""
        taps = self.run_trunk(x)
        outputs: list[torch.Tensor | None] = [None] * len(self.branches)
        for members, g in zip(self.groups, self.grouped):
            for j, out in zip(members, g(taps[g.start])):
                outputs[j] = out
        frozen_features = None
        for j, branch in enumerate(self.branches):
            if outputs[j] is None:
                outputs[j], frozen_features = self.run_branch(branch, taps, frozen_features)
        return tuple(outputs)


class _Dropped(nn.Module):
    """Where a grouped task's plain branch was: its start only (it runs in its group)."""

    def __init__(self, start: int):
        super().__init__()
        self.start, self.siamese = start, False
