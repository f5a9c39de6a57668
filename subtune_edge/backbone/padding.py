"""TensorFlow "same" padding made static for one input size: what an export at a fixed H x W runs.

timm's ``tf_*`` models (EfficientNet-Lite among them) pad their stride-2 convolutions the way
TensorFlow's ``SAME`` does, computed at run time from the input's size (``Conv2dSame``). Exported,
that is a chain of ``Shape``, ``Gather``, ``Div``, ``Ceil``, ``Sub`` per convolution, evaluated on every
inference; in an INT8 graph it also stands between a ``DequantizeLinear`` and its ``Conv``, so ONNX
Runtime cannot fuse them into one int8 kernel and switches layout around it. An export's spatial
size is fixed (only the batch is dynamic), so the padding is a constant: :func:`freeze_same_padding`
computes it once per convolution with one forward pass and makes each such convolution pad by that
constant, with the same arithmetic (``timm.layers.pad_same_arg``) and so the same outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers.conv2d_same import Conv2dSame
from timm.layers.padding import pad_same_arg
from torch import nn


class StaticSameConv2d(nn.Conv2d):
    """A ``Conv2dSame`` whose padding was computed for one input size: ``same_pad`` = (left, right, top, bottom)."""

    same_pad: tuple[int, int, int, int] = (0, 0, 0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, self.same_pad), self.weight, self.bias, self.stride, (0, 0), self.dilation,
                        self.groups)


def freeze_same_padding(model: nn.Module, input_size: tuple[int, int]) -> int:
    """Make every ``Conv2dSame`` of ``model`` pad by the constant its input at ``input_size`` needs, in place.

    Args:
        model: the timm model (its submodules are the backbone's units, shared with every task model).
        input_size: the (H, W) every input will have.

    Returns:
        How many convolutions were made static.
    """
    sizes: dict[nn.Module, tuple[int, int]] = {}

    def record(module: nn.Module, args: tuple) -> None:  # a pre-hook returning something would replace the input
        sizes.setdefault(module, tuple(args[0].shape[-2:]))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if type(m) is Conv2dSame]
    if not hooks:
        return 0
    try:
        with torch.no_grad():
            was = model.training
            model.eval()(torch.zeros(1, 3, *input_size))
            model.train(was)
    finally:
        for h in hooks:
            h.remove()
    for module, size in sizes.items():
        module.__class__ = StaticSameConv2d
        module.same_pad = tuple(int(p) for p in pad_same_arg(list(size), module.weight.shape[-2:], module.stride,
                                                              module.dilation))
    return len(sizes)
