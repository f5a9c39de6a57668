"""A timm model seen as stem -> ordered tunable units -> neck -> pool -> classifier.

SubTuning chooses among *units* (residual blocks, transformer blocks, ...), so every other part
of the toolkit needs one answer to "what are the units of this model and how do I run them one
after another". Each supported family has a small adapter below that answers it; running the
parts in sequence reproduces ``model(x)`` exactly in eval mode.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property

import torch
from timm.data import resolve_data_config
from timm.models.convnext import ConvNeXt
from timm.models.efficientnet import EfficientNet
from timm.models.mobilenetv3 import MobileNetV3
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from . import weights as weights_mod
from .errors import BackboneError


def _img_size_ok(v) -> bool:
    def dim(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and 0 < x <= 8192

    return dim(v) or (isinstance(v, (list, tuple)) and len(v) == 2 and all(dim(x) for x in v))


# The model arguments subtune-edge itself writes (see model_args_for_input), with their checks. A
# spec read from a file is data: any other key could make timm load a checkpoint_path or fail.
MODEL_ARGS = {"img_size": (_img_size_ok, "a positive integer or [height, width]")}


def check_model_args(model_args: dict) -> dict:
    """Refuse model arguments that subtune-edge does not write itself.

    A :class:`BackboneSpec` read from a task file or a manifest is passed to ``timm.create_model``
    as keywords; accepting any key would let a file make timm read a ``checkpoint_path`` or fail
    with a ``TypeError``. Arguments given in Python to :func:`create_backbone` are not checked.

    Args:
        model_args: the ``model_args`` of a spec read from a file.

    Returns:
        ``model_args``, unchanged.

    Raises:
        BackboneError: naming the first key that is not allowed or has a bad value.
    """
    for key, value in model_args.items():
        if key not in MODEL_ARGS:
            raise BackboneError(f"model argument {key!r} is not one subtune-edge writes (allowed: "
                                f"{', '.join(MODEL_ARGS)}); a file cannot pass other arguments to timm")
        ok, expected = MODEL_ARGS[key]
        if not ok(value):
            raise BackboneError(f"model argument {key!r} is {value!r:.40}, expected {expected}")
    return model_args


def hash_tensors(items: Iterable[tuple[str, torch.Tensor]], *, sort: bool = False) -> str:
    """sha256 over named tensors: each name, dtype, shape and raw bytes, in the given order.

    The one tensor hash of the project: the backbone fingerprint and a task file's content hash
    are both this, so a byte that changes anywhere changes the hash.

    Args:
        items: (name, tensor) pairs.
        sort: hash in name order instead of the given order.

    Returns:
        The hex digest.
    """
    h = hashlib.sha256()
    for key, tensor in (sorted(items, key=lambda kv: kv[0]) if sort else items):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to rebuild the same backbone in another process (stored in task files).

    Attributes:
        model_name: the timm model name.
        weights: a weights source, see :mod:`subtune_edge.weights`.
        model_args: creation arguments for ``timm.create_model`` (only ``img_size`` when read from a file).
    """

    model_name: str
    weights: str = "timm"
    model_args: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The spec as JSON, as task files and manifests store it."""
        return {"model_name": self.model_name, "weights": self.weights, "model_args": dict(self.model_args)}

    @classmethod
    def from_json(cls, data: dict) -> BackboneSpec:
        """Read a spec written by :meth:`to_json`, refusing model arguments subtune-edge never writes.

        Args:
            data: the JSON object.

        Returns:
            The spec.

        Raises:
            BackboneError: ``data`` is not such an object, or holds a model argument not allowed.
        """
        if not isinstance(data, dict) or not isinstance(data.get("model_name"), str):
            raise BackboneError(f"a backbone spec must be an object with a model_name, not {str(data)[:40]!r}")
        weights = data.get("weights", "timm")
        if not isinstance(weights, str) or not weights:
            raise BackboneError(f"a backbone spec's weights must be a non-empty string, not {weights!r:.40}")
        model_args = data.get("model_args") or {}
        if not isinstance(model_args, dict):
            raise BackboneError(f"a backbone spec's model_args must be an object, not {model_args!r:.40}")
        return cls(data["model_name"], weights, dict(check_model_args(model_args)))


@dataclass
class Backbone:
    """A timm model split into the parts SubTuning reasons about.

    The parts are the model's own submodules (or thin views over them), so weights are shared
    with ``model`` and nothing is copied.
    """

    spec: BackboneSpec
    family: str
    model: nn.Module
    stem: nn.Module
    units: dict[str, nn.Module]
    neck: nn.Module
    pool: nn.Module
    classifier: nn.Module
    num_features: int

    @property
    def name(self) -> str:
        return self.spec.model_name

    @property
    def unit_names(self) -> list[str]:
        return list(self.units)

    def unit_index(self, name: str) -> int:
        try:
            return self.unit_names.index(name)
        except ValueError:
            raise BackboneError(
                f"'{self.name}' has no unit '{name}'; its units are "
                f"{_ellipsize(self.unit_names)} (see `subtune-edge blocks {self.name}`)") from None

    def parse_units(self, text: str) -> list[str]:
        """'layer4' / 'layer4.1,layer4.2' / 'none' / 'all' -> unit names in model order.

        A prefix that is not itself a unit selects every unit under it, so 'layer4' means the
        whole stage, as users say it.
        """
        text = text.strip()
        if text in ("", "none"):
            return []
        if text == "all":
            return self.unit_names
        chosen: set[str] = set()
        for part in (p.strip() for p in text.split(",") if p.strip()):
            if part in self.units:
                chosen.add(part)
                continue
            under = [n for n in self.unit_names if n.startswith(part + ".")]
            if not under:
                self.unit_index(part)  # raises with the list of units
            chosen.update(under)
        return [n for n in self.unit_names if n in chosen]

    @property
    def data_config(self) -> dict:
        """timm's resolved preprocessing (input size, mean, std, interpolation, crop)."""
        cfg = resolve_data_config({}, model=self.model)
        cfg["input_size"] = tuple(int(v) for v in cfg["input_size"])
        if "img_size" in self.spec.model_args:  # a ViT created for another resolution
            h, w = _pair(self.spec.model_args["img_size"])
            cfg["input_size"] = (cfg["input_size"][0], h, w)
        return cfg

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over every tensor a task may rely on: stem, units, neck and pool.

        The original classifier is left out: no task uses it, and a weights file saved with another
        number of classes still gives the same trunk.
        """
        return hash_tensors((f"{prefix}.{key}", tensor) for prefix, module in self.frozen_parts()
                            for key, tensor in sorted(module.state_dict().items()))

    def frozen_parts(self) -> list[tuple[str, nn.Module]]:
        return [("stem", self.stem), *self.units.items(), ("neck", self.neck), ("pool", self.pool)]

    def forward_units(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        for unit in list(self.units.values())[start:stop]:
            x = unit(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features, the input of any head."""
        return self.pool(self.neck(self.forward_units(self.stem(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The original model's output, recomposed from the parts (used to check the split)."""
        return self.classifier(self.forward_features(x))


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _ellipsize(names: list[str], keep: int = 6) -> str:
    if len(names) <= 2 * keep:
        return ", ".join(names)
    return ", ".join(names[:keep]) + ", ..., " + ", ".join(names[-keep:])


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
    return "; ".join(f"{fam} (e.g. {', '.join(ex)})" for fam, (_, _, ex) in FAMILIES.items())


def split_model(model: nn.Module, spec: BackboneSpec) -> Backbone:
    """Split an existing timm model into a :class:`Backbone` (no weights are copied)."""
    for family, (cls, adapter, _) in FAMILIES.items():
        if type(model) is cls:
            parts = adapter(model)
            num_features = parts["classifier"].in_features
            model.eval()
            return Backbone(spec=spec, family=family, model=model, num_features=num_features, **parts)
    raise BackboneError(
        f"'{spec.model_name}' is a {type(model).__name__}, which subtune-edge cannot split into units yet; "
        f"supported families: {supported_families()}")


def create_backbone(model_name: str, weights: str = "timm", **model_args) -> Backbone:
    """Create a timm model with the given weights and split it into units."""
    spec = BackboneSpec(model_name, weights, dict(model_args))
    return load_backbone(spec)


def load_backbone(spec: BackboneSpec) -> Backbone:
    model = weights_mod.create_model(spec.model_name, spec.weights, **spec.model_args)
    backbone = split_model(model, spec)
    for p in model.parameters():
        p.requires_grad_(False)
    return backbone


def model_args_for_input(model_name: str, input_size: tuple[int, int] | None) -> dict:
    """Creation args a model needs to run at ``input_size``: ViTs fix their patch grid at creation."""
    from timm.models import is_model_in_modules

    if input_size is not None and is_model_in_modules(model_name, ["vision_transformer"]):
        return {"img_size": tuple(int(v) for v in input_size)}
    return {}
