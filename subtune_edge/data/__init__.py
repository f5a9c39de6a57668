"""Datasets for training tasks: image folders, in-memory arrays, and the bundled digits data.

Whatever the source, a dataset reaches training as a :class:`TaskData`: class labels, a training
split and a validation split of *untransformed* images, and the timm data config (input size,
mean, std, interpolation, crop) the images are prepared with. Transforms come from
``timm.data.create_transform``: RandomResizedCrop + horizontal flip for training (the paper's
augmentation), resize + center crop for evaluation. Without augmentation the training split uses
the evaluation transform, which makes every sample deterministic (what the prefix cache of
:mod:`subtune_edge.training` relies on).

Sources, as written on the command line (``--data``):

``digits:digit`` / ``digits:parity`` / ``digits:ge5``
    scikit-learn's 1,797 real 8x8 handwritten digits, upscaled to the backbone's input size, with
    three targets that make three distinct tasks: the digit (10 classes), odd/even, and >= 5.
a folder
    ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``, or ``root/<class>/*.jpg`` split
    into train/val by a seeded, stratified fraction.

Splits are deterministic functions of a seed; a :class:`DataSpec` names a dataset completely, so a
worker process can rebuild exactly the same splits from it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform

from ..errors import DataError
from .images import IMAGE_EXTENSIONS, check_image, is_image_file, list_images, read_image, to_rgb  # noqa: F401

DIGITS_PREFIX = "digits"
# target name -> (class labels, function from the digit to the class index)
DIGITS_TARGETS: dict[str, tuple[list[str], Callable[[np.ndarray], np.ndarray]]] = {
    "digit": ([str(i) for i in range(10)], lambda d: d),
    "parity": (["even", "odd"], lambda d: d % 2),
    "ge5": (["<5", ">=5"], lambda d: (d >= 5).astype(np.int64)),
}


# -- datasets of untransformed images ------------------------------------------------------------
class ImageSet(torch.utils.data.Dataset):
    """Images and integer targets; ``transform`` turns a PIL image into the model's input tensor.

    ``key`` identifies the images (not their targets, not the transform), so caches of model
    activations can tell two sets apart without hashing pixels. A subset remembers the set it was
    cut from (``base``) and where its images sit there (``base_indices``), so a cache can compute
    activations for the whole base once and serve every split, fold and sample size from it.
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
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.image(index)
        return (self.transform(img) if self.transform else img), int(self.targets[index])

    def with_transform(self, transform: Callable | None) -> ImageSet:
        other = copy.copy(self)
        other.transform = transform
        return other

    def subset(self, indices: Sequence[int], tag: str) -> ImageSet:
        raise NotImplementedError


class ArrayImages(ImageSet):
    """uint8 images in memory, ``(N, H, W)`` grey or ``(N, H, W, 3)`` RGB, resized to ``size`` on read."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, key: str, size: tuple[int, int] | None = None,
                 transform: Callable | None = None, base: ImageSet | None = None,
                 base_indices: np.ndarray | None = None):
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise DataError(f"array images must be uint8 (0..255), got {images.dtype}; scale and cast them first")
        if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
            raise DataError(f"array images must have shape (N, H, W) or (N, H, W, 3), got {images.shape}")
        if len(images) != len(targets):
            raise DataError(f"{len(images)} array images but {len(targets)} targets; give one target per image")
        super().__init__(targets, key, transform, base, base_indices)
        self.images = images
        self.size = size

    def image(self, index: int) -> Image.Image:
        img = Image.fromarray(self.images[index]).convert("RGB")
        if self.size is not None and img.size != (self.size[1], self.size[0]):
            img = img.resize((self.size[1], self.size[0]), Image.Resampling.BICUBIC)
        return img

    def subset(self, indices: Sequence[int], tag: str) -> ArrayImages:
        idx = np.asarray(indices, dtype=np.int64)
        return ArrayImages(self.images[idx], self.targets[idx], _subkey(self.key, tag, idx), self.size, self.transform,
                           *self._base_of(idx))


class FolderImages(ImageSet):
    """Image files on disk; a file that cannot be decoded raises :class:`DataError` naming it."""

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


# -- what training sees ----------------------------------------------------------------------------
@dataclass
class TaskData:
    """A classification dataset ready for training: labels, two splits and the preprocessing."""

    source: str
    labels: list[str]
    train: ImageSet
    val: ImageSet
    data_config: dict
    augment_default: bool = True
    aug_args: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def input_size(self) -> tuple[int, int]:
        return int(self.data_config["input_size"][1]), int(self.data_config["input_size"][2])

    def transform(self, training: bool) -> Callable:
        cfg = self.data_config
        common = dict(input_size=tuple(cfg["input_size"]), interpolation=cfg.get("interpolation", "bilinear"),
                      mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
        if training:
            args = {"hflip": 0.5, "color_jitter": None, **self.aug_args}
            return create_transform(is_training=True, **common, **args)
        return create_transform(is_training=False, crop_pct=cfg.get("crop_pct"), crop_mode=cfg.get("crop_mode"),
                                **common)

    def train_set(self, augment: bool) -> ImageSet:
        """The training split with the training transform, or the deterministic evaluation one."""
        return self.train.with_transform(self.transform(training=augment))

    def val_set(self) -> ImageSet:
        return self.val.with_transform(self.transform(training=False))

    def describe(self) -> dict:
        counts = np.bincount(self.train.targets, minlength=self.num_classes).tolist()
        return {"source": self.source, "labels": list(self.labels), "train_samples": len(self.train),
                "val_samples": len(self.val), "train_per_class": counts}


def check_classes(labels: list[str], targets: np.ndarray, where: str) -> None:
    """At least two classes, and every class present in the training split."""
    if len(labels) < 2:
        raise DataError(f"{where} has {len(labels)} class{'es' if len(labels) != 1 else ''} "
                        f"({', '.join(labels) or 'none'}); a classifier needs at least 2: add a folder per class")
    counts = np.bincount(targets, minlength=len(labels)) if len(targets) else np.zeros(len(labels), int)
    missing = [labels[i] for i, c in enumerate(counts) if c == 0]
    if missing:
        raise DataError(f"{where}: class '{missing[0]}' has no training samples; add images or drop the class")


# -- splits ----------------------------------------------------------------------------------------
def stratified_split(targets: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep, held) indices: about ``fraction`` of every class held out, at least one where a class has two."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation fraction must be between 0 and 1, got {fraction}; pass e.g. --val-fraction 0.2")
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        rng.shuffle(idx)
        n = int(round(len(idx) * fraction))
        n = min(max(n, 1 if len(idx) >= 2 else 0), len(idx) - 1)
        held.extend(idx[:n])
        keep.extend(idx[n:])
    return np.sort(np.array(keep, dtype=np.int64)), np.sort(np.array(held, dtype=np.int64))


def stratified_sample(targets: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices, classes in proportion, every class at least once when ``n`` allows."""
    if n >= len(targets):
        return np.arange(len(targets))
    classes, counts = np.unique(targets, return_counts=True)
    share = counts / counts.sum() * n
    take = np.maximum(np.floor(share).astype(int), 1 if n >= len(classes) else 0)
    take = np.minimum(take, counts)
    # hand out what rounding left over, largest remainders first
    for i in np.argsort(-(share - np.floor(share))):
        if take.sum() >= n:
            break
        if take[i] < counts[i]:
            take[i] += 1
    while take.sum() > n:
        take[np.argmax(take)] -= 1
    rng = np.random.default_rng(seed)
    chosen = []
    for c, k in zip(classes, take):
        idx = np.flatnonzero(targets == c)
        chosen.extend(rng.permutation(idx)[:k])
    return np.sort(np.array(chosen, dtype=np.int64))


def stratified_folds(targets: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """``k`` disjoint folds covering every index, each class dealt round-robin after a seeded shuffle."""
    if k < 2:
        raise DataError(f"k-fold validation needs at least 2 folds, got {k}")
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    offset = 0
    for c in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == c))
        for j, i in enumerate(idx):
            folds[(offset + j) % k].append(int(i))
        offset += len(idx)
    return [np.sort(np.array(f, dtype=np.int64)) for f in folds]


# -- the plain, picklable name of a dataset ------------------------------------------------------------
@dataclass(frozen=True)
class DataSpec:
    """Everything that determines a :class:`TaskData`, so another process can rebuild it exactly.

    ``train_samples`` keeps a stratified subset of the training split (for small-data studies),
    ``val_samples`` one of the validation split (for quicker searches);
    ``folds``/``fold`` replace the validation split by fold ``fold`` of a stratified k-fold split of
    the training split (the held-out validation split is then not used at all).
    """

    source: str
    input_size: tuple[int, int] | None = None
    val_fraction: float = 0.2
    split_seed: int = 0
    train_samples: int | None = None
    folds: int = 0
    fold: int | None = None
    val_samples: int | None = None

    def with_fold(self, fold: int | None) -> DataSpec:
        return replace(self, fold=fold)

    def to_json(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size) if self.input_size else None
        return d

    @classmethod
    def from_json(cls, d: dict) -> DataSpec:
        d = dict(d)
        if d.get("input_size"):
            d["input_size"] = tuple(int(v) for v in d["input_size"])
        return cls(**d)


def resolve_data_config(data_config: dict, input_size: tuple[int, int] | None) -> dict:
    cfg = dict(data_config)
    cfg["input_size"] = tuple(int(v) for v in cfg["input_size"])
    if input_size is not None:
        cfg["input_size"] = (cfg["input_size"][0], int(input_size[0]), int(input_size[1]))
    return cfg


def load_data(spec: DataSpec | str, data_config: dict) -> TaskData:
    """Build the :class:`TaskData` that ``spec`` names, prepared with ``data_config`` (a backbone's)."""
    if isinstance(spec, str):
        spec = DataSpec(spec)
    cfg = resolve_data_config(data_config, spec.input_size)
    if spec.source == DIGITS_PREFIX or spec.source.startswith(DIGITS_PREFIX + ":"):
        data = digits(spec.source.partition(":")[2] or "digit", cfg, spec.val_fraction, spec.split_seed)
    else:
        data = image_folder(spec.source, cfg, spec.val_fraction, spec.split_seed)
    if spec.train_samples is not None:
        data = limit_train(data, spec.train_samples, spec.split_seed)
    if spec.val_samples is not None and spec.val_samples < len(data.val):
        idx = stratified_sample(data.val.targets, spec.val_samples, spec.split_seed)
        data = replace(data, val=data.val.subset(idx, f"n{spec.val_samples}s{spec.split_seed}"))
    if spec.folds:
        if spec.fold is None or not 0 <= spec.fold < spec.folds:
            raise DataError(f"fold {spec.fold} is not one of 0..{spec.folds - 1}")
        data = kfold(data, spec.folds, spec.fold, spec.split_seed)
    return data


def limit_train(data: TaskData, n: int, seed: int) -> TaskData:
    if n < data.num_classes:
        raise DataError(f"{n} training samples cannot cover {data.num_classes} classes; ask for at least "
                        f"{data.num_classes}")
    idx = stratified_sample(data.train.targets, n, seed)
    return replace(data, train=data.train.subset(idx, f"n{n}s{seed}"))


def kfold(data: TaskData, k: int, fold: int, seed: int) -> TaskData:
    """Fold ``fold`` of ``k`` over the training split: train on the other folds, validate on this one."""
    folds = stratified_folds(data.train.targets, k, seed)
    held = folds[fold]
    rest = np.sort(np.concatenate([f for i, f in enumerate(folds) if i != fold]))
    train = data.train.subset(rest, f"k{k}f{fold}s{seed}t")
    check_classes(data.labels, train.targets, f"{data.source} (fold {fold} of {k})")
    return replace(data, train=train, val=data.train.subset(held, f"k{k}f{fold}s{seed}v"))


# -- the bundled digits ------------------------------------------------------------------------------
def digits(target: str, data_config: dict, val_fraction: float = 0.2, seed: int = 0) -> TaskData:
    """scikit-learn's real 8x8 handwritten digits as RGB images at the config's input size.

    The images are made at the input size, so the recorded preprocessing uses ``crop_pct`` 1.0
    (resize to the input size, no border cropped). Augmentation is off by default: a flipped digit
    is another digit; when asked for, it is a mild random resized crop without flips.
    """
    if target not in DIGITS_TARGETS:
        raise DataError(f"unknown digits target '{target}'; use one of "
                        f"{', '.join(f'{DIGITS_PREFIX}:{t}' for t in DIGITS_TARGETS)}")
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = np.clip(np.round(raw.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels, to_class = DIGITS_TARGETS[target]
    targets = to_class(raw.target.astype(np.int64))
    cfg = dict(data_config, crop_pct=1.0, crop_mode="center")
    size = (int(cfg["input_size"][1]), int(cfg["input_size"][2]))
    source = f"{DIGITS_PREFIX}:{target}"
    # the split depends on the digit, not the target, so the three tasks share their splits
    train_idx, val_idx = stratified_split(raw.target, val_fraction, seed)
    # the key names the images only: the three targets share cached activations
    everything = ArrayImages(images, targets, f"{DIGITS_PREFIX}@{size[0]}x{size[1]}", size)
    return TaskData(source, list(labels), everything.subset(train_idx, f"train{val_fraction}s{seed}"),
                    everything.subset(val_idx, f"val{val_fraction}s{seed}"), cfg, augment_default=False,
                    aug_args={"hflip": 0.0, "scale": (0.6, 1.0), "ratio": (0.85, 1.15)})


def from_arrays(train_images: np.ndarray, train_targets: Sequence[int], val_images: np.ndarray,
                val_targets: Sequence[int], labels: list[str], data_config: dict, *,
                input_size: tuple[int, int] | None = None, source: str = "arrays",
                augment: bool = True) -> TaskData:
    """A :class:`TaskData` from uint8 arrays in memory (images are resized to the input size on read)."""
    cfg = resolve_data_config(data_config, input_size)
    size = (int(cfg["input_size"][1]), int(cfg["input_size"][2]))
    train_targets, val_targets = np.asarray(train_targets, np.int64), np.asarray(val_targets, np.int64)
    for name, t in (("train", train_targets), ("val", val_targets)):
        if len(t) and (t.min() < 0 or t.max() >= len(labels)):
            raise DataError(f"{name} targets must lie in 0..{len(labels) - 1} for {len(labels)} labels")
    check_classes(labels, train_targets, source)
    if not len(val_targets):
        raise DataError(f"{source} has no validation images; give some or split the training images")
    uid = hashlib.sha1(np.ascontiguousarray(train_images).tobytes()[:1 << 20]
                       + np.ascontiguousarray(val_images).tobytes()[:1 << 20]).hexdigest()[:12]
    key = f"{source}#{uid}@{size[0]}x{size[1]}"
    return TaskData(source, list(labels), ArrayImages(train_images, train_targets, key + "/train", size),
                    ArrayImages(val_images, val_targets, key + "/val", size), cfg, augment_default=augment)


# -- image folders ---------------------------------------------------------------------------------
def _class_dirs(root: Path) -> list[Path]:
    return sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _scan(root: Path, check: bool) -> tuple[list[str], list[str], list[str]]:
    """(class names, file paths, class name per file) under ``root/<class>/...``."""
    classes = _class_dirs(root)
    paths, names = [], []
    for d in classes:
        found = [str(p) for p in list_images(d)]
        if not found:
            raise DataError(f"class folder {d} has no images ({'/'.join(IMAGE_EXTENSIONS)}); "
                            "add images or remove the folder")
        paths.extend(found)
        names.extend([d.name] * len(found))
    if check:
        for p in paths:
            check_image(p)
    return [d.name for d in classes], paths, names


def image_folder(root: str | os.PathLike, data_config: dict, val_fraction: float = 0.2, seed: int = 0,
                 check_images: bool = True) -> TaskData:
    """``root/train/<class>/…`` + ``root/val/<class>/…``, or ``root/<class>/…`` split by ``val_fraction``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data '{root}' is neither a folder nor one of "
                        f"{', '.join(f'{DIGITS_PREFIX}:{t}' for t in DIGITS_TARGETS)}; pass --data PATH|digits:digit")
    cfg = dict(data_config)
    key_base = f"folder:{root.resolve()}@{cfg['input_size'][1]}x{cfg['input_size'][2]}"
    train_dir, val_dir = root / "train", root / "val"
    if train_dir.is_dir():
        classes, paths, names = _scan(train_dir, check_images)
        index = {c: i for i, c in enumerate(classes)}
        targets = np.array([index[n] for n in names], dtype=np.int64)
        check_classes(classes, targets, str(train_dir))
        everything = FolderImages(paths, targets, key_base + "/train")
        if val_dir.is_dir():
            v_classes, v_paths, v_names = _scan(val_dir, check_images)
            unknown = [c for c in v_classes if c not in index]
            if unknown:
                raise DataError(f"validation class folder {val_dir / unknown[0]} has no training folder "
                                f"in {train_dir}; rename or remove it")
            v_targets = np.array([index[n] for n in v_names], dtype=np.int64)
            if not len(v_targets):
                raise DataError(f"{val_dir} has no images; add a folder per class or remove {val_dir}")
            return TaskData(str(root), classes, everything, FolderImages(v_paths, v_targets, key_base + "/val"), cfg)
    else:
        classes, paths, names = _scan(root, check_images)
        index = {c: i for i, c in enumerate(classes)}
        targets = np.array([index[n] for n in names], dtype=np.int64)
        check_classes(classes, targets, str(root))
        everything = FolderImages(paths, targets, key_base)
    keep, held = stratified_split(everything.targets, val_fraction, seed)
    if not len(held):
        raise DataError(f"{root} is too small to hold out {val_fraction:.0%} for validation; add images or "
                        "give a val/ folder")
    train = everything.subset(keep, f"train{val_fraction}s{seed}")
    check_classes(classes, train.targets, str(root))
    return TaskData(str(root), classes, train, everything.subset(held, f"val{val_fraction}s{seed}"), cfg)


def spec_key(spec: DataSpec, data_config: dict) -> str:
    """A string that names the data ``load_data(spec, data_config)`` builds (for per-process caches)."""
    return json.dumps([spec.to_json(), resolve_data_config(data_config, None)], sort_keys=True, default=str)
