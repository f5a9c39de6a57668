"""The :class:`Backbone`: a timm model split into parts, its fingerprint, and how one is created.

Creating one goes weights -> timm model -> the family's adapter (:mod:`.families`) -> parts; the
parts are views of the model's own submodules, so running them in sequence is ``model(x)``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

import torch
from timm.data import resolve_data_config
from torch import nn

from ..errors import BackboneError
from ..weights import create_model
from .families import Family, family_of, get_family, supported_families
from .spec import BackboneSpec

log = logging.getLogger(__name__)


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


@dataclass
class Backbone:
    """A timm model split into the parts SubTuning reasons about.

    The parts are the model's own submodules (or thin views over them), so weights are shared
    with ``model`` and nothing is copied. Running ``stem``, every unit in order, ``neck``, ``pool``
    and ``classifier`` reproduces ``model(x)`` in eval mode.

    Attributes:
        spec: how to rebuild it in another process.
        family: the adapter that split it (``resnet``, ``efficientnet``, ``vit``, ...).
        model: the timm model itself.
        stem: the part before the first unit (never tuned).
        units: the tunable units by name, in model order.
        neck: the part between the last unit and the pool (often ``Identity``).
        pool: global pooling down to the features.
        classifier: the original head (no task uses it).
        num_features: features after ``pool``, the input of a head.
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
    def family_record(self) -> Family:
        """The :class:`~.families.Family` record of :attr:`family` (its flags: transformer, groupable, ...)."""
        return get_family(self.family)

    @property
    def name(self) -> str:
        """The timm model name."""
        return self.spec.model_name

    @property
    def unit_names(self) -> list[str]:
        """The units in model order."""
        return list(self.units)

    def _no_unit(self, name: str) -> BackboneError:
        return BackboneError(f"'{self.name}' has no unit '{name}'; its units are "
                             f"{_ellipsize(self.unit_names)} (see `subtune-edge blocks {self.name}`)")

    def unit_index(self, name: str) -> int:
        """Position of unit ``name`` in model order.

        Raises:
            BackboneError: no such unit (the message lists the units).
        """
        try:
            return self.unit_names.index(name)
        except ValueError:
            raise self._no_unit(name) from None

    def check_units(self, names: Iterable[str]) -> None:
        """Refuse, listing the backbone's units, the first of ``names`` that is not one of them.

        Raises:
            BackboneError: naming the unknown unit.
        """
        unknown = [n for n in names if n not in self.units]
        if unknown:
            raise self._no_unit(unknown[0])

    def parse_units(self, text: str) -> list[str]:
        """'layer4' / 'layer4.1,layer4.2' / 'none' / 'all' -> unit names in model order.

        A prefix that is not itself a unit selects every unit under it, so 'layer4' means the
        whole stage, as users say it.

        Args:
            text: the selection as a user writes it.

        Returns:
            The selected units in model order (empty for ``none``).

        Raises:
            BackboneError: a name that is neither a unit nor a prefix of units.
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
                raise self._no_unit(part)
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
        """(name, module) of every part a task may rely on frozen, in model order (the fingerprint's input)."""
        return [("stem", self.stem), *self.units.items(), ("neck", self.neck), ("pool", self.pool)]

    def forward_units(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Run units ``start .. stop-1`` on an activation."""
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


def split_model(model: nn.Module, spec: BackboneSpec) -> Backbone:
    """Split an existing timm model into a :class:`Backbone` (no weights are copied).

    Args:
        model: a timm model of a supported family (its class, not its name, picks the adapter).
        spec: how it was created, recorded in task files.

    Returns:
        The backbone, in eval mode.

    Raises:
        BackboneError: a model of a family subtune-edge cannot split (the message lists the families).
    """
    family = family_of(model)
    if family is not None:
        parts = family.adapter(model)
        num_features = parts["classifier"].in_features
        model.eval()
        return Backbone(spec=spec, family=family.name, model=model, num_features=num_features, **parts)
    raise BackboneError(
        f"'{spec.model_name}' is a {type(model).__name__}, which subtune-edge cannot split into units yet; "
        f"supported families: {supported_families()}")


def create_backbone(model_name: str, weights: str = "timm", **model_args) -> Backbone:
    """Create a timm model with the given weights and split it into units.

    Args:
        model_name: a timm model name.
        weights: ``timm``, ``random``, ``offline`` or a state_dict file (see :mod:`subtune_edge.weights`).
        **model_args: passed to ``timm.create_model`` as given (a spec read from a file allows only
            ``img_size``, see :func:`check_model_args`).

    Returns:
        The frozen backbone (no gradients, eval mode).

    Raises:
        BackboneError: an unknown model, bad arguments or an unsupported family.
        WeightsError: weights that cannot be fetched, read or fitted.
    """
    spec = BackboneSpec(model_name, weights, dict(model_args))
    return load_backbone(spec)


def load_backbone(spec: BackboneSpec) -> Backbone:
    """:func:`create_backbone` from a spec (as a task file, a run or another process gives it).

    Args:
        spec: the model name, weights source and model arguments.

    Returns:
        The frozen backbone.

    Raises:
        BackboneError: see :func:`create_backbone`.
        WeightsError: see :func:`create_backbone`.
    """
    log.debug("loading backbone %s (%s weights)", spec.model_name, spec.weights)
    model = create_model(spec.model_name, spec.weights, **spec.model_args)
    backbone = split_model(model, spec)
    for p in model.parameters():
        p.requires_grad_(False)
    return backbone
