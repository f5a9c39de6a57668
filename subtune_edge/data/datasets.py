"""What training sees: sets of untransformed images with targets, and :class:`TaskData` around them.

A set holds images before any transform; the transform is attached late (:meth:`TaskData.train_set`,
:meth:`TaskData.val_set`), so the same images serve augmented training, deterministic evaluation
and the prefix cache of :mod:`subtune_edge.train`, which keys activations by :attr:`ImageSet.key`.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform

from ..docs import documented
from ..errors import DataError
from .images import read_image


class ImageSet(torch.utils.data.Dataset):
    """Images and integer targets; ``transform`` turns a PIL image into the model's input tensor.

    ``key`` identifies the images (not their targets, not the transform), so caches of model
    activations can tell two sets apart without hashing pixels. A subset remembers the set it was
    cut from (``base``) and where its images sit there (``base_indices``), so a cache can compute
    activations for the whole base once and serve every split, fold and sample size from it.

    Args:
        targets: one class index per image.
        key: names the images (see above).
        transform: PIL image -> tensor; None yields the PIL images themselves.
        base: the set this one was cut from, if any.
        base_indices: where this set's images sit in ``base``.
    """

    def __init__(self, targets: np.ndarray, key: str, transform: Callable | None = None,
                 base: ImageSet | None = None, base_indices: np.ndarray | None = None):
        self.targets = np.asarray(targets, dtype=np.int64)
        self.key = key
        self.transform = transform
        self.base = base
        self.base_indices = base_indices

    def _base_of(self, idx: np.ndarray) -> tuple[ImageSet, np.ndarray]:
        if self.base is None:
            return self, idx
        return self.base, self.base_indices[idx]

    def __len__(self) -> int:
        return len(self.targets)

    def image(self, index: int) -> Image.Image:
        """The untransformed RGB image at ``index``."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.image(index)
        return (self.transform(img) if self.transform else img), int(self.targets[index])

    def with_transform(self, transform: Callable | None) -> ImageSet:
        """The same images (sharing storage) under another transform."""
        other = copy.copy(self)
        other.transform = transform
        return other

    def subset(self, indices: Sequence[int], tag: str) -> ImageSet:
        """The images at ``indices``; ``tag`` names the cut in the subset's key (e.g. ``train0.2s0``)."""
        raise NotImplementedError


class ArrayImages(ImageSet):
    """uint8 images in memory, ``(N, H, W)`` grey or ``(N, H, W, 3)`` RGB, resized to ``size`` on read.

    ``meta`` holds per-image records that subsets keep aligned with their images (where a texture
    crop was cut, which corruption an image got), so tests and studies can check provenance.

    Raises:
        DataError: images that are not uint8, of another shape, or not one per target.
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, key: str, size: tuple[int, int] | None = None,
                 transform: Callable | None = None, base: ImageSet | None = None,
                 base_indices: np.ndarray | None = None, meta: dict[str, np.ndarray] | None = None):
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise DataError(f"array images must be uint8 (0..255), got {images.dtype}; scale and cast them first")
        if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
            raise DataError(f"array images must have shape (N, H, W) or (N, H, W, 3), got {images.shape}")
        if len(images) != len(targets):
            raise DataError(f"{len(images)} array images but {len(targets)} targets; give one target per image")
        meta = {k: np.asarray(v) for k, v in (meta or {}).items()}
        for name, values in meta.items():
            if len(values) != len(images):
                raise DataError(f"meta '{name}' has {len(values)} records for {len(images)} images; give one per image")
        super().__init__(targets, key, transform, base, base_indices)
        self.images = images
        self.size = size
        self.meta = meta

    def image(self, index: int) -> Image.Image:
        img = Image.fromarray(self.images[index]).convert("RGB")
        if self.size is not None and img.size != (self.size[1], self.size[0]):
            img = img.resize((self.size[1], self.size[0]), Image.Resampling.BICUBIC)
        return img

    def subset(self, indices: Sequence[int], tag: str) -> ArrayImages:
        idx = np.asarray(indices, dtype=np.int64)
        return ArrayImages(self.images[idx], self.targets[idx], _subkey(self.key, tag, idx), self.size, self.transform,
                           *self._base_of(idx), meta={k: v[idx] for k, v in self.meta.items()})


class FolderImages(ImageSet):
    """Image files on disk, read by :func:`~subtune_edge.data.images.read_image` (bombs and bad files refused)."""

    def __init__(self, paths: list[str], targets: np.ndarray, key: str, transform: Callable | None = None,
                 base: ImageSet | None = None, base_indices: np.ndarray | None = None):
        super().__init__(targets, key, transform, base, base_indices)
        self.paths = list(paths)

    def image(self, index: int) -> Image.Image:
        return read_image(self.paths[index])

    def subset(self, indices: Sequence[int], tag: str) -> FolderImages:
        idx = np.asarray(indices, dtype=np.int64)
        return FolderImages([self.paths[i] for i in idx], self.targets[idx], _subkey(self.key, tag, idx),
                            self.transform, *self._base_of(idx))


def _subkey(key: str, tag: str, idx: np.ndarray) -> str:
    return f"{key}/{tag}:{hashlib.sha1(idx.tobytes()).hexdigest()[:12]}"


def task_data_config(data_config: dict, input_size: tuple[int, int] | None) -> dict:
    """A backbone's timm data config at the input size a task asks for.

    Not timm's ``resolve_data_config``: that one derives a config from a model; this one only
    overrides the resolution of a config already derived, keeping mean, std, interpolation, crop.

    Args:
        data_config: a timm data config (``input_size`` as ``(C, H, W)``, ``mean``, ``std``, ...).
        input_size: ``(H, W)`` to use instead of the config's, or None to keep it.

    Returns:
        A new dict with ``input_size`` a tuple of ints.
    """
    cfg = dict(data_config)
    cfg["input_size"] = tuple(int(v) for v in cfg["input_size"])
    if input_size is not None:
        cfg["input_size"] = (cfg["input_size"][0], int(input_size[0]), int(input_size[1]))
    return cfg


@documented
@dataclass
class TaskData:
    """A classification dataset ready for training: labels, two splits and the preprocessing.

    Every source (:func:`~subtune_edge.data.load_data`, :func:`~subtune_edge.data.image_folder`,
    :func:`~subtune_edge.data.from_arrays`, :func:`~subtune_edge.data.digits`) returns one, so
    training knows nothing of where images come from. The transforms are timm's
    (``timm.data.create_transform``) built from ``data_config``, which the task file records as
    its preprocessing, so that export and ``predict`` prepare images exactly as training did.
    """

    source: str = field(metadata={"help": "Where the data came from, as the user named it (a path, digits:parity)."})
    labels: list[str] = field(metadata={"help": "Class names; a target is an index into this list."})
    train: ImageSet = field(metadata={"help": "The training split, untransformed."})
    val: ImageSet = field(metadata={"help": "The validation split, untransformed."})
    data_config: dict = field(metadata={"help": "timm data config: input_size (C, H, W), mean, std, "
                                                "interpolation, crop_pct, crop_mode."})
    augment_default: bool = field(default=True, metadata={
        "help": "Whether training augments unless told otherwise (off for digits: a flipped digit is another)."})
    aug_args: dict = field(default_factory=dict, metadata={
        "help": "Keyword arguments for timm's training transform, over hflip=0.5 and no colour jitter."})

    @property
    def num_classes(self) -> int:
        """How many classes the head must have."""
        return len(self.labels)

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) the images are prepared at."""
        return int(self.data_config["input_size"][1]), int(self.data_config["input_size"][2])

    def transform(self, training: bool) -> Callable:
        """timm's transform: RandomResizedCrop + flip when ``training``, else resize + center crop.

        Args:
            training: build the augmenting training transform instead of the evaluation one.

        Returns:
            A callable from a PIL image to a normalised CHW float tensor.
        """
        cfg = self.data_config
        common = dict(input_size=tuple(cfg["input_size"]), interpolation=cfg.get("interpolation", "bilinear"),
                      mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
        if training:
            args = {"hflip": 0.5, "color_jitter": None, **self.aug_args}
            return create_transform(is_training=True, **common, **args)
        return create_transform(is_training=False, crop_pct=cfg.get("crop_pct"), crop_mode=cfg.get("crop_mode"),
                                **common)

    def train_set(self, augment: bool) -> ImageSet:
        """The training split with the training transform, or the deterministic evaluation one.

        Args:
            augment: augment (random crops and flips); without, every sample is deterministic,
                which the prefix cache relies on.

        Returns:
            The training split as tensors and targets.
        """
        return self.train.with_transform(self.transform(training=augment))

    def val_set(self) -> ImageSet:
        """The validation split with the evaluation transform."""
        return self.val.with_transform(self.transform(training=False))

    def describe(self) -> dict:
        """JSON-able summary for run records: source, labels, split sizes, training images per class."""
        counts = np.bincount(self.train.targets, minlength=self.num_classes).tolist()
        return {"source": self.source, "labels": list(self.labels), "train_samples": len(self.train),
                "val_samples": len(self.val), "train_per_class": counts}


def check_classes(labels: list[str], targets: np.ndarray, where: str) -> None:
    """Refuse data a classifier cannot be trained on: fewer than 2 classes, or a class without samples.

    Args:
        labels: the class names.
        targets: the training targets.
        where: how to name the data in the error (a folder, ``digits:parity (fold 1 of 4)``).

    Raises:
        DataError: naming the first problem and the fix.
    """
    if len(labels) < 2:
        raise DataError(f"{where} has {len(labels)} class{'es' if len(labels) != 1 else ''} "
                        f"({', '.join(labels) or 'none'}); a classifier needs at least 2: add a folder per class")
    counts = np.bincount(targets, minlength=len(labels)) if len(targets) else np.zeros(len(labels), int)
    missing = [labels[i] for i, c in enumerate(counts) if c == 0]
    if missing:
        raise DataError(f"{where}: class '{missing[0]}' has no training samples; add images or drop the class")
