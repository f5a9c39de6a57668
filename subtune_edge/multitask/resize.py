"""Rebuilding a pruned unit at the widths its task file records.

A pruned task stores only tensors: no channel indices, no pruning history. The structure follows
from them: every convolution, normalisation and linear layer whose saved weight is narrower than
the frozen unit's gets tensors of the saved shape and the shape attributes that go with them
(``in_channels`` / ``out_channels`` / ``groups`` of a depthwise convolution, ``num_features``,
``in_features`` / ``out_features``, ``normalized_shape``); the strict load then fills them. The
module's code (timm's blocks) is unchanged, so a rebuilt unit runs, traces and exports like the
full-width one.
"""

from __future__ import annotations

import torch
from torch import nn


def _resize_shape_attributes(module: nn.Module, weight: torch.Tensor) -> bool:
    """Set ``module``'s shape attributes from its saved ``weight``; False for a module that has none."""
    if isinstance(module, nn.Conv2d):
        depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
        module.out_channels = int(weight.shape[0])
        if depthwise:
            module.in_channels = module.groups = int(weight.shape[0])
        else:
            module.in_channels = int(weight.shape[1]) * module.groups
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.num_features = int(weight.shape[0])
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = (int(v) for v in weight.shape)
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = tuple(int(v) for v in weight.shape)
    elif isinstance(module, nn.GroupNorm):
        module.num_channels = int(weight.shape[0])
    else:
        return False
    return True


def resize_to_state(unit: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Give ``unit`` (in place) the shapes of ``state``, then load it strictly.

    Args:
        unit: a copy of the frozen unit (its full-width structure).
        state: the task's tensors for the unit, some narrower than the unit's.

    Returns:
        ``unit``, at the saved widths and holding the saved values.

    Raises:
        RuntimeError: the state does not fit the unit even after resizing (``load_state_dict``'s error).
    """
    for name, module in unit.named_modules():
        prefix = f"{name}." if name else ""
        weight = state.get(prefix + "weight")
        if weight is None or not _resize_shape_attributes(module, weight):
            continue
        for pname, p in list(module.named_parameters(recurse=False)):
            saved = state.get(prefix + pname)
            if saved is not None and saved.shape != p.shape:
                setattr(module, pname, nn.Parameter(torch.empty_like(saved), requires_grad=p.requires_grad))
        for bname, b in list(module.named_buffers(recurse=False)):
            saved = state.get(prefix + bname)
            if b is not None and saved is not None and saved.shape != b.shape:
                setattr(module, bname, torch.empty_like(saved))
    unit.load_state_dict(state, strict=True)
    return unit
