"""What a backbone is made from: the spec stored in task files, and the model arguments a file may hold."""

from __future__ import annotations

from dataclasses import dataclass, field

from timm.models import is_model_in_modules

from ..docs import documented
from ..errors import BackboneError
from ..schema import FileFormat, validate

#: a spec as task files and manifests store it: ``common.schema.json``'s ``$defs/backbone``
SPEC_FORMAT = FileFormat("common.schema.json#/$defs/backbone", BackboneError, "re-train or re-save the task")


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


@documented
@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to rebuild the same backbone in another process (stored in task files).

    Attributes:
        model_name: the timm model name.
        weights: a weights source, see :mod:`subtune_edge.weights`.
        model_args: creation arguments for ``timm.create_model`` (only ``img_size`` when read from a file).
    """

    model_name: str = field(metadata={"help": "The timm model name, e.g. resnet50 or tf_efficientnet_lite0."})
    weights: str = field(default="timm", metadata={"help": "timm, random, offline or the path of a state_dict file."})
    model_args: dict = field(default_factory=dict, metadata={"help": "Arguments for timm.create_model (img_size)."})

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
        validate(data, SPEC_FORMAT, "backbone spec")
        weights = data.get("weights", "timm")
        model_args = data.get("model_args") or {}
        return cls(data["model_name"], weights, dict(check_model_args(model_args)))


def model_args_for_input(model_name: str, input_size: tuple[int, int] | None) -> dict:
    """Creation args a model needs to run at ``input_size``: ViTs fix their patch grid at creation.

    These are the only model arguments subtune-edge writes into task files (see :data:`MODEL_ARGS`).
    """
    if input_size is not None and is_model_in_modules(model_name, ["vision_transformer"]):
        return {"img_size": tuple(int(v) for v in input_size)}
    return {}
