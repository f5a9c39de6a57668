"""The manifest's preprocessing: image -> the model's NCHW float32 input, as FORMAT.md tells apps.

timm's evaluation transform for the recorded data config (resize the shorter side to
``floor(H / crop_pct)``, center-crop, scale to [0, 1], normalize). Images are read by
:func:`subtune_edge.data.images.read_image`, the one reader of untrusted image files (size limit
before decoding, 16-bit and float images scaled by what they hold).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image
from timm.data import create_transform

from ..data.images import read_image, to_rgb
from ..errors import ExportError
from .manifest import Preprocessing

TRANSFORM_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def eval_transform(preprocessing: Preprocessing | Mapping):
    """timm's evaluation transform (PIL image -> CHW float tensor) for a recorded data config.

    Args:
        preprocessing: the manifest's record, or a timm data config dict with the same keys.

    Returns:
        A torchvision transform.
    """
    if isinstance(preprocessing, Preprocessing):
        preprocessing = preprocessing.to_json()
    cfg = {k: preprocessing[k] for k in TRANSFORM_KEYS if preprocessing.get(k) is not None}
    cfg["input_size"] = tuple(int(v) for v in cfg["input_size"])
    for key in ("mean", "std"):
        if key in cfg:
            cfg[key] = tuple(float(v) for v in cfg[key])
    return create_transform(**cfg, is_training=False)


def load_image(image) -> Image.Image:
    """A path, PIL image or HWC / HW uint8 array as an 8-bit RGB PIL image.

    Raises:
        DataError: an image file that is missing, unreadable, too large or of unknown range.
        ExportError: an array that is not HxW / HxWxC uint8.
    """
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ExportError(f"an image array must be HxW or HxWxC uint8, got {image.dtype} {image.shape}; "
                              "pass preprocessed NCHW float32 batches to run() instead")
        return Image.fromarray(image).convert("RGB")
    if not isinstance(image, (str, os.PathLike)):
        raise ExportError(f"cannot use a {type(image).__name__} as an image; pass a path, a PIL image or a uint8 "
                          "array")
    return read_image(image)


def preprocess(images: Sequence, preprocessing: Preprocessing | Mapping) -> np.ndarray:
    """Images (paths, PIL images or uint8 arrays) -> the model's NCHW float32 input.

    Args:
        images: the images, in batch order.
        preprocessing: the manifest's record (or a data config dict).

    Returns:
        An ``[N, 3, H, W]`` float32 array.
    """
    transform = eval_transform(preprocessing)
    return np.stack([transform(load_image(img)).numpy() for img in images]).astype(np.float32, copy=False)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, stable for large logits."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
