"""Regrouping one unit of ``k`` tasks into one wider module (the layers of a grouped branch).

The first convolution of a branch reads the shared input with the ``k`` tasks' filters stacked;
every later convolution is grouped; BatchNorm is folded into the convolutions (eval only);
activations and squeeze-excite act per group. :mod:`.grouped` assembles these into branches.
"""

from __future__ import annotations

import copy

import torch
from timm.layers import BatchNormAct2d, Conv2dSame, SelectAdaptivePool2d
from timm.models._efficientnet_blocks import ConvBnAct, DepthwiseSeparableConv, InvertedResidual, SqueezeExcite
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from ..backbone.padding import StaticSameConv2d
from ..errors import ExportError

_CONVS = (nn.Conv2d,)  # Conv2dSame subclasses nn.Conv2d; its forward pads from the (unchanged) kernel
_STATELESS = (nn.Identity, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
              nn.Flatten, nn.AvgPool2d, nn.MaxPool2d, nn.Dropout, SelectAdaptivePool2d)


class _Repeat(nn.Module):
    """The shared input repeated for each of ``k`` groups: ``[B, C, ...] -> [B, k*C, ...]``."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x] * self.k, dim=1)


class _PerGroup(nn.Module):
    """A frozen unit run once on the ``k`` groups folded into the batch axis (its weights stay shared)."""

    def __init__(self, unit: nn.Module, k: int):
        super().__init__()
        self.unit, self.k = unit, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1] // self.k
        y = self.unit(x.reshape(-1, c, *x.shape[2:]))  # [B, k*C, ...] -> [B*k, C, ...]: a view, no copy
        return y.reshape(-1, self.k * y.shape[1], *y.shape[2:])


class _GroupedSE(nn.Module):
    """timm EfficientNet squeeze-excite, per group: both 1x1 convolutions grouped."""

    def __init__(self, ses: list[SqueezeExcite]):
        super().__init__()
        k = len(ses)
        self.conv_reduce = _wide_conv([(s.conv_reduce, None) for s in ses], shared=False)
        self.conv_expand = _wide_conv([(s.conv_expand, None) for s in ses], shared=False)
        self.act1, self.gate = ses[0].act1, ses[0].gate
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * self.gate(s)


class _GroupedUnit(nn.Module):
    """One unit of ``k`` tasks: a main path, an optional shortcut (a path, or identity) and a final act."""

    def __init__(self, main: nn.Sequential, shortcut: nn.Module | None, act: nn.Module | None):
        super().__init__()
        self.main, self.shortcut, self.act = main, shortcut, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.main(x)
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        return self.act(y) if self.act is not None else y


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``conv`` with the eval-mode ``bn`` after it folded in."""
    w = conv.weight.detach()
    b = conv.bias.detach() if conv.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
    if bn is None:
        return w.clone(), b.clone()
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
        1 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(scale)
    return w * scale.reshape(-1, 1, 1, 1), (b - bn.running_mean) * scale + shift


def _wide_conv(pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d | None]], shared: bool) -> nn.Conv2d:
    """The ``k`` tasks' (conv, bn) pairs as one convolution with their filters stacked.

    ``shared``: the input is the common ``[B, C, ...]`` (only for ``groups == 1``); otherwise it is
    the ``[B, k*C, ...]`` of the groups and the result has ``k`` times the groups.
    """
    conv = pairs[0][0]
    if type(conv) not in (nn.Conv2d, Conv2dSame, StaticSameConv2d) or conv.padding_mode != "zeros":
        raise ExportError(f"grouped branches cannot regroup a {type(conv).__name__}; export without {{param}}",
                          param="grouped")
    k = len(pairs)
    weights, biases = zip(*(_fold(c, bn) for c, bn in pairs))
    wide = copy.deepcopy(conv)  # keeps the class (Conv2dSame pads at run time), kernel, stride, padding
    wide.out_channels = k * conv.out_channels
    if not (shared and conv.groups == 1):
        wide.in_channels, wide.groups = k * conv.in_channels, k * conv.groups
    wide.weight = nn.Parameter(torch.cat(weights, 0).contiguous(), requires_grad=False)
    wide.bias = nn.Parameter(torch.cat(biases, 0).contiguous(), requires_grad=False)
    return wide


def _act_of(bn: nn.Module | None) -> nn.Module | None:
    """What a BatchNormAct2d applies after its norm (None for a plain BatchNorm)."""
    if isinstance(bn, BatchNormAct2d):
        return bn.act
    return None


class _Chain:
    """Builds a grouped path step by step, tracking whether it still reads the shared input."""

    def __init__(self, k: int, shared: bool):
        self.k, self.shared, self.steps = k, shared, []

    def conv(self, pairs: list[tuple[nn.Conv2d, nn.Module | None]]) -> None:
        first = pairs[0][0]
        if self.shared and first.groups != 1:
            self.steps.append(_Repeat(self.k))  # depthwise on the shared input: feed each group its copy
            self.shared = False
        self.steps.append(_wide_conv(pairs, self.shared))
        self.shared = False
        act = _act_of(pairs[0][1])
        if act is not None and not isinstance(act, nn.Identity):
            self.steps.append(act)

    def widen(self) -> None:
        if self.shared:
            self.steps.append(_Repeat(self.k))
            self.shared = False

    def stateless(self, module: nn.Module | None) -> None:
        if module is None or isinstance(module, nn.Identity):
            return
        if not isinstance(module, _STATELESS):
            raise ExportError(f"grouped branches cannot regroup a {type(module).__name__} layer; export without "
                              "{param}", param="grouped")
        self.steps.append(module)

    def layers(self, layers: list[list[nn.Module]]) -> None:
        """The ``k`` tasks' layer lists, walked in step: each conv with the BatchNorm after it, or a stateless layer."""
        i = 0
        while i < len(layers[0]):
            m = layers[0][i]
            if isinstance(m, nn.Conv2d):
                nxt = layers[0][i + 1] if i + 1 < len(layers[0]) else None
                bn = isinstance(nxt, nn.BatchNorm2d)
                self.conv([(ly[i], ly[i + 1] if bn else None) for ly in layers])
                i += 2 if bn else 1
            else:
                self.stateless(m)
                i += 1

    def se(self, ses: list[nn.Module]) -> None:
        if isinstance(ses[0], nn.Identity):
            return
        if not isinstance(ses[0], SqueezeExcite):
            raise ExportError(f"grouped branches cannot regroup a {type(ses[0]).__name__} attention layer; export "
                              "without {param}", param="grouped")
        self.widen()
        self.steps.append(_GroupedSE(ses))

    def build(self) -> nn.Sequential:
        self.widen()  # a path that never met a conv still yields k groups
        return nn.Sequential(*self.steps)


def _resnet_unit(blocks: list[nn.Module], shared: bool) -> _GroupedUnit:
    k, b0 = len(blocks), blocks[0]
    if getattr(b0, "se", None) is not None:
        raise ExportError("grouped branches cannot regroup a ResNet block with attention ('se'); export without "
                          "{param}", param="grouped")
    main = _Chain(k, shared)
    bottleneck = isinstance(b0, Bottleneck)
    main.conv([(b.conv1, b.bn1) for b in blocks])
    main.stateless(b0.act1)
    if not bottleneck:
        main.stateless(b0.aa)
    main.conv([(b.conv2, b.bn2) for b in blocks])
    if bottleneck:
        main.stateless(b0.act2)
        main.stateless(b0.aa)
        main.conv([(b.conv3, b.bn3) for b in blocks])
    if b0.downsample is None:
        shortcut = _Repeat(k) if shared else nn.Identity()
    else:
        sc = _Chain(k, shared)
        sc.layers([list(b.downsample) if isinstance(b.downsample, nn.Sequential) else [b.downsample] for b in blocks])
        shortcut = sc.build()
    act = b0.act3 if bottleneck else b0.act2
    return _GroupedUnit(main.build(), shortcut, act)


def _efficientnet_unit(blocks: list[nn.Module], shared: bool) -> _GroupedUnit:
    k, b0 = len(blocks), blocks[0]
    if getattr(b0, "conv_s2d", None) is not None:
        raise ExportError("grouped branches cannot regroup a space-to-depth block; export without {param}",
                          param="grouped")
    main = _Chain(k, shared)
    if isinstance(b0, InvertedResidual):
        main.conv([(b.conv_pw, b.bn1) for b in blocks])
        main.conv([(b.conv_dw, b.bn2) for b in blocks])
        main.stateless(b0.aa)
        main.se([b.se for b in blocks])
        main.conv([(b.conv_pwl, b.bn3) for b in blocks])
    elif isinstance(b0, DepthwiseSeparableConv):
        main.conv([(b.conv_dw, b.bn1) for b in blocks])
        main.stateless(b0.aa)
        main.se([b.se for b in blocks])
        main.conv([(b.conv_pw, b.bn2) for b in blocks])
    else:  # ConvBnAct
        main.conv([(b.conv, b.bn1) for b in blocks])
        main.stateless(b0.aa)
    shortcut = (_Repeat(k) if shared else nn.Identity()) if b0.has_skip else None
    return _GroupedUnit(main.build(), shortcut, None)


def _sequential_unit(seqs: list[nn.Sequential], shared: bool) -> _GroupedUnit:
    """``conv_head`` units: a Sequential of convs, norms and stateless layers (MobileNetV3 pools first)."""
    k = len(seqs)
    chain = _Chain(k, shared)
    chain.layers([list(s) for s in seqs])
    return _GroupedUnit(chain.build(), None, None)


def group_units(units: list[nn.Module], shared: bool) -> nn.Module:
    """``k`` versions of one unit (one per task, eval mode) as one grouped module.

    Args:
        units: the tasks' copies of the unit, all of one architecture.
        shared: the input is the common ``[B, C, H, W]`` activation (the branch's first unit);
            otherwise it is the ``[B, k*C, H, W]`` of the groups.

    Returns:
        A module mapping the input to ``[B, k*C', H', W']`` (``[B, k*C']`` after a flatten), group
        ``t`` holding what ``units[t]`` computes.

    Raises:
        ExportError: a layer this regrouping does not know (param ``grouped``).
    """
    u0 = units[0]
    if any(type(u) is not type(u0) for u in units):
        raise ExportError("grouped branches need one architecture per unit; export without {param}", param="grouped")
    if isinstance(u0, (BasicBlock, Bottleneck)):
        return _resnet_unit(units, shared)
    if isinstance(u0, (InvertedResidual, DepthwiseSeparableConv, ConvBnAct)):
        return _efficientnet_unit(units, shared)
    if isinstance(u0, nn.Sequential):
        return _sequential_unit(units, shared)
    raise ExportError(f"grouped branches cannot regroup a {type(u0).__name__} unit; export without {{param}}",
                      param="grouped")
