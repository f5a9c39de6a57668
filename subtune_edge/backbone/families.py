"""One adapter per model family: how a timm model splits into stem, units, neck, pool and classifier.

To add a family: write an adapter returning those parts (the model's own submodules, so no weight
is copied) and register it in :data:`FAMILIES`; ``tests/test_backbone.py`` checks that running the
parts in sequence reproduces ``model(x)``.
"""

from __future__ import annotations

from collections.abc import Callable

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


# One registry, in the spirit of timm's: family name -> (model class, adapter, example models).
FAMILIES: dict[str, tuple[type, Callable[[nn.Module], dict], tuple[str, ...]]] = {
    "resnet": (ResNet, _resnet, ("resnet18", "resnet50")),
    "efficientnet": (EfficientNet, _efficientnet, ("tf_efficientnet_lite0", "efficientnet_b0")),
    "mobilenetv3": (MobileNetV3, _mobilenetv3, ("mobilenetv3_large_100",)),
    "vit": (VisionTransformer, _vit, ("vit_tiny_patch16_224", "vit_base_patch16_224")),
    "convnext": (ConvNeXt, _convnext, ("convnext_atto", "convnext_tiny")),
}


def supported_families() -> str:
    """The families the adapters split, with example models, for error messages."""
    return "; ".join(f"{fam} (e.g. {', '.join(ex)})" for fam, (_, _, ex) in FAMILIES.items())
