"""One record per model family: how a timm model splits into stem, units, neck, pool and classifier,
and what the rest of the toolkit may do with it.

A :class:`Family` is the one place that knows a family: its timm class, its adapter, whether it
trains with the paper's transformer recipe, whether grouped branches can rebuild its units, and
whether its patch grid (input size) is fixed at creation. Training, grouping and export read these
fields instead of keeping their own lists of family names.

To add a family: write an adapter returning those parts (the model's own submodules, so no weight
is copied) and one :class:`Family` line in :data:`FAMILIES` (or :func:`register_family`);
``tests/test_backbone.py`` checks that running the parts in sequence reproduces ``model(x)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from timm.models.convnext import ConvNeXt
from timm.models.efficientnet import EfficientNet
from timm.models.mobilenetv3 import MobileNetV3
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn


class _Borrowed(nn.Module):
    """Runs a method of the original model over a few of its submodules and attributes.

    timm keeps logic such as ViT's position embedding in model methods; borrowing the method keeps
    us exact across timm versions without registering the whole model (and its classifier) here.
    """

    def __init__(self, model: nn.Module, fn: Callable, modules: list[str] = (), params: list[str] = (),
                 attrs: list[str] = ()):
        super().__init__()
        self._fn = fn
        for name in modules:
            setattr(self, name, getattr(model, name))
        for name in params:
            value = getattr(model, name, None)
            if isinstance(value, nn.Parameter):
                self.register_parameter(name, value)
            else:
                setattr(self, name, value)
        for name in attrs:
            setattr(self, name, getattr(model, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(self, x)


def _seq(model: nn.Module, *names: str) -> nn.Sequential:
    return nn.Sequential(*(getattr(model, n) for n in names))


def _resnet(model: ResNet) -> dict:
    units = {f"layer{i}.{j}": block for i in range(1, 5) for j, block in enumerate(getattr(model, f"layer{i}"))}
    return dict(stem=_seq(model, "conv1", "bn1", "act1", "maxpool"), units=units, neck=nn.Identity(),
                pool=model.global_pool, classifier=model.fc)


def _staged_blocks(model: nn.Module) -> dict[str, nn.Module]:
    return {f"blocks.{i}.{j}": block for i, stage in enumerate(model.blocks) for j, block in enumerate(stage)}


def _efficientnet(model: EfficientNet) -> dict:
    units = _staged_blocks(model)
    units["conv_head"] = _seq(model, "conv_head", "bn2")
    return dict(stem=_seq(model, "conv_stem", "bn1"), units=units, neck=nn.Identity(),
                pool=model.global_pool, classifier=model.classifier)


def _mobilenetv3(model: MobileNetV3) -> dict:
    # MobileNetV3 pools *before* its conv_head, so the conv_head unit carries the pooling and the
    # pool part is left with nothing to do.
    units = _staged_blocks(model)
    units["conv_head"] = _seq(model, "global_pool", "conv_head", "norm_head", "act2", "flatten")
    return dict(stem=_seq(model, "conv_stem", "bn1"), units=units, neck=nn.Identity(),
                pool=nn.Identity(), classifier=model.classifier)


def _vit(model: VisionTransformer) -> dict:
    def stem(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = VisionTransformer._pos_embed(self, x)
        return self.norm_pre(self.patch_drop(x))

    def pool(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.head_drop(self.fc_norm(VisionTransformer.pool(self, x)))

    stem_mod = _Borrowed(model, stem, modules=["patch_embed", "pos_drop", "patch_drop", "norm_pre"],
                         params=["cls_token", "reg_token", "pos_embed"],
                         attrs=["dynamic_img_size", "no_embed_class", "num_prefix_tokens"])
    pool_mod = _Borrowed(model, pool, modules=["attn_pool", "fc_norm", "head_drop"],
                         attrs=["global_pool", "num_prefix_tokens", "pool_include_prefix"])
    units = {f"blocks.{i}": block for i, block in enumerate(model.blocks)}
    return dict(stem=stem_mod, units=units, neck=model.norm, pool=pool_mod, classifier=model.head)


def _convnext(model: ConvNeXt) -> dict:
    units: dict[str, nn.Module] = {}
    for i, stage in enumerate(model.stages):
        if not isinstance(stage.downsample, nn.Identity):
            units[f"stages.{i}.downsample"] = stage.downsample
        for j, block in enumerate(stage.blocks):
            units[f"stages.{i}.blocks.{j}"] = block
    head = model.head
    pool = nn.Sequential(head.global_pool, head.norm, head.flatten, head.pre_logits, head.drop)
    return dict(stem=model.stem, units=units, neck=model.norm_pre, pool=pool, classifier=head.fc)


@dataclass(frozen=True)
class Family:
    """A family of timm models.

    Attributes:
        name: the family's name, recorded in manifests (``resnet``, ``vit``, ...).
        model_class: the timm class whose instances this family splits (matched exactly).
        adapter: ``adapter(model) -> {stem, units, neck, pool, classifier}``.
        examples: model names, for messages and docs.
        transformer: trains with the paper's transformer recipe (lr 1e-4, weight decay 5e-5, no
            channels_last) instead of the CNN one.
        groupable: grouped branches can rebuild its units as one wider network (the grouper,
            :func:`subtune_edge.multitask.regroup.group_units`, knows its conv / BatchNorm blocks).
        fixed_input_size: the input size is fixed when the model is created (a ViT's patch grid), so
            an export runs only at that size.
    """

    name: str
    model_class: type
    adapter: Callable[[nn.Module], dict]
    examples: tuple[str, ...]
    transformer: bool = False
    groupable: bool = False
    fixed_input_size: bool = False


# One registry, in the spirit of timm's: family name -> its record.
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("resnet", ResNet, _resnet, ("resnet18", "resnet50"), groupable=True),
    Family("efficientnet", EfficientNet, _efficientnet, ("tf_efficientnet_lite0", "efficientnet_b0"), groupable=True),
    Family("mobilenetv3", MobileNetV3, _mobilenetv3, ("mobilenetv3_large_100",), groupable=True),
    Family("vit", VisionTransformer, _vit, ("vit_tiny_patch16_224", "vit_base_patch16_224"), transformer=True,
           fixed_input_size=True),
    Family("convnext", ConvNeXt, _convnext, ("convnext_atto", "convnext_tiny")),
)}


def register_family(family: Family) -> Family:
    """Add a family (a timm class subtune-edge should split); returns it.

    Raises:
        ValueError: a family of that name is registered already.
    """
    if family.name in FAMILIES:
        raise ValueError(f"a family named '{family.name}' is registered already")
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    """The family called ``name`` (as a :class:`~.model.Backbone` or a manifest records it).

    Raises:
        KeyError: no such family.
    """
    return FAMILIES[name]


def family_of(model: nn.Module) -> Family | None:
    """The family whose class ``model`` is an instance of (exactly), or None."""
    return next((f for f in FAMILIES.values() if type(model) is f.model_class), None)


def families_where(**flags: bool) -> list[str]:
    """Names of the families whose flags have the given values (``families_where(groupable=True)``)."""
    return [f.name for f in FAMILIES.values() if all(getattr(f, k) == v for k, v in flags.items())]


def supported_families() -> str:
    """The families the adapters split, with example models, for error messages."""
    return "; ".join(f"{f.name} (e.g. {', '.join(f.examples)})" for f in FAMILIES.values())
