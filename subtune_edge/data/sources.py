"""Where a dataset comes from: the bundled digits (clean or corrupted), an image folder, arrays in memory.

Each returns a :class:`~subtune_edge.data.datasets.TaskData`; to add a source, write a function
here (or in a module of its own, as :mod:`.textures`) that builds the two splits as
:class:`~subtune_edge.data.datasets.ImageSet` objects, and teach
:func:`~subtune_edge.data.spec.canonical_source` and :func:`~subtune_edge.data.spec.load_data` its name.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .corruptions import ALIASES, CORRUPTIONS, DEFAULT_SEVERITY, MIXED, SEVERITIES, corrupt, image_rng, mixed_choice
from .datasets import ArrayImages, FolderImages, TaskData, check_classes, task_data_config
from .images import IMAGE_EXTENSIONS, check_image, list_images
from .splits import stratified_split
from .textures import TEXTURES_PREFIX

log = logging.getLogger(__name__)

DIGITS_PREFIX = "digits"
# target name -> (class labels, function from the digit to the class index)
DIGITS_TARGETS: dict[str, tuple[list[str], Callable[[np.ndarray], np.ndarray]]] = {
    "digit": ([str(i) for i in range(10)], lambda d: d),
    "parity": (["even", "odd"], lambda d: d % 2),
    "ge5": (["<5", ">=5"], lambda d: (d >= 5).astype(np.int64)),
}


DIGITS_C_PREFIX = "digits-c"
DIGITS_C_FORM = f"{DIGITS_C_PREFIX}:TARGET[:CORRUPTION[:SEVERITY]]"


def digits_sources() -> str:
    """The digits sources as written on the command line, for messages: ``digits:digit, ...``."""
    return ", ".join(f"{DIGITS_PREFIX}:{t}" for t in DIGITS_TARGETS)


def named_sources() -> str:
    """Every source that is a name, not a folder, as written on the command line (for messages)."""
    return f"{digits_sources()}, {DIGITS_C_FORM}, {TEXTURES_PREFIX}[:N]"


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as 8x8 uint8 (0..255) and the digit of each."""
    from sklearn.datasets import load_digits  # optional: heavy (scipy, ~1 s); only the bundled digits need it

    raw = load_digits()
    return np.clip(np.round(raw.images * (255.0 / 16.0)), 0, 255).astype(np.uint8), raw.target.astype(np.int64)


# -- the bundled digits ------------------------------------------------------------------------------
def digits(target: str, data_config: dict, val_fraction: float = 0.2, seed: int = 0) -> TaskData:
    """scikit-learn's real 8x8 handwritten digits as RGB images at the config's input size.

    The images are made at the input size, so the recorded preprocessing uses ``crop_pct`` 1.0
    (resize to the input size, no border cropped). Augmentation is off by default: a flipped digit
    is another digit; when asked for, it is a mild random resized crop without flips. The split
    depends on the digit, not the target, so the three tasks share their splits and their cached
    activations.

    Args:
        target: ``digit`` (10 classes), ``parity`` (even/odd) or ``ge5`` (<5 / >=5).
        data_config: the backbone's timm data config at the wanted input size.
        val_fraction: the share of each digit held out for validation.
        seed: the split's seed.

    Returns:
        The 1,797 digits, split.

    Raises:
        DataError: an unknown target.
    """
    if target not in DIGITS_TARGETS:
        raise DataError(f"unknown digits target '{target}'; use one of {digits_sources()}")
    images, digit = _load_digits()
    cfg = dict(data_config, crop_pct=1.0, crop_mode="center")
    size = (int(cfg["input_size"][1]), int(cfg["input_size"][2]))
    # the key names the images only: the three targets share cached activations
    everything = ArrayImages(images, DIGITS_TARGETS[target][1](digit), f"{DIGITS_PREFIX}@{size[0]}x{size[1]}", size)
    return _split_digits(f"{DIGITS_PREFIX}:{target}", target, everything, digit, cfg, val_fraction, seed)


def _split_digits(source: str, target: str, everything: ArrayImages, digit: np.ndarray, cfg: dict,
                  val_fraction: float, seed: int) -> TaskData:
    """The digits' split (by the digit, so every target and corruption shares it) and their settings."""
    train_idx, val_idx = stratified_split(digit, val_fraction, seed)
    return TaskData(source, list(DIGITS_TARGETS[target][0]),
                    everything.subset(train_idx, f"train{val_fraction}s{seed}"),
                    everything.subset(val_idx, f"val{val_fraction}s{seed}"), cfg, augment_default=False,
                    aug_args={"hflip": 0.0, "scale": (0.6, 1.0), "ratio": (0.85, 1.15)})


# -- the bundled digits, corrupted -------------------------------------------------------------------
def parse_digits_c(source: str) -> tuple[str, str, int]:
    """``(target, corruption, severity)`` of ``digits-c[:TARGET[:CORRUPTION[:SEVERITY]]]``, defaults filled in.

    Defaults: target ``digit``, corruption ``mixed``, severity 3. ``noise``, ``blur`` and ``jpeg``
    stand for the CIFAR-10-C names.

    Args:
        source: the spec as written.

    Returns:
        The target, the corruption's CIFAR-10-C name (or ``mixed``) and the severity.

    Raises:
        DataError: too many parts, an unknown target or corruption, a severity that is not 1..5.
    """
    parts = source.split(":")
    if parts[0] != DIGITS_C_PREFIX or len(parts) > 4:
        raise DataError(f"'{source}' is not of the form {DIGITS_C_FORM}; set {{param}} to e.g. "
                        f"{DIGITS_C_PREFIX}:digit:contrast:3", param="data_source")
    target, corruption, severity = (parts[1:] + ["", "", ""])[:3]
    target = target or "digit"
    if target not in DIGITS_TARGETS:
        raise DataError(f"unknown {DIGITS_C_PREFIX} target '{target}' in '{source}'; use one of "
                        f"{', '.join(DIGITS_TARGETS)}: set {{param}} to e.g. {DIGITS_C_PREFIX}:digit",
                        param="data_source")
    corruption = ALIASES.get(corruption, corruption) or MIXED
    if corruption not in (*CORRUPTIONS, MIXED):
        raise DataError(f"unknown corruption '{corruption}' in '{source}'; use one of {', '.join(CORRUPTIONS)} "
                        f"(or {', '.join(ALIASES)}) or {MIXED}: set {{param}} to e.g. "
                        f"{DIGITS_C_PREFIX}:{target}:contrast", param="data_source")
    severity = severity or str(DEFAULT_SEVERITY)
    if severity.strip() not in {str(v) for v in SEVERITIES}:
        raise DataError(f"severity '{severity}' in '{source}' is not one of {SEVERITIES[0]}..{SEVERITIES[-1]}; "
                        f"set {{param}} to e.g. {DIGITS_C_PREFIX}:{target}:{corruption}:{DEFAULT_SEVERITY}",
                        param="data_source")
    return target, corruption, int(severity)


def digits_c(target: str, data_config: dict, corruption: str = MIXED, severity: int = DEFAULT_SEVERITY,
             val_fraction: float = 0.2, seed: int = 0) -> TaskData:
    """The digits upscaled to the input size, then corrupted as CIFAR-10-C (:mod:`.corruptions`).

    The images are a fixed dataset: every image's draws (noise, the ``mixed`` choice) come from a
    generator seeded by its index alone, so one spec gives the same pixels in every process, and
    the split is the clean digits' (by the digit, with ``seed``): train and validation indices
    equal those of ``digits:TARGET``, and clean-vs-corrupted comparisons pair image by image. The
    validation split is corrupted as the training split is (CIFAR-10-C's setting for finetuning).

    Args:
        target: ``digit``, ``parity`` or ``ge5``, as for :func:`digits`.
        data_config: the backbone's timm data config at the wanted input size.
        corruption: one of :data:`~subtune_edge.data.corruptions.CORRUPTIONS`, or ``mixed`` (one of
            them per image).
        severity: 1..5.
        val_fraction: the share of each digit held out for validation.
        seed: the split's seed.

    Returns:
        The 1,797 corrupted digits, split; ``train.meta["corruption"]`` names each image's.

    Raises:
        DataError: an unknown target, corruption or severity.
    """
    target, corruption, severity = parse_digits_c(f"{DIGITS_C_PREFIX}:{target}:{corruption}:{severity}")
    images, digit = _load_digits()
    cfg = dict(data_config, crop_pct=1.0, crop_mode="center")
    h, w = int(cfg["input_size"][1]), int(cfg["input_size"][2])
    out = np.empty((len(images), h, w), dtype=np.uint8)
    names = []
    for i, img in enumerate(images):
        # the same resize ArrayImages applies to the clean digits on read
        up = np.asarray(Image.fromarray(img, "L").resize((w, h), Image.Resampling.BICUBIC))
        name = mixed_choice(i) if corruption == MIXED else corruption
        out[i] = corrupt(up, name, severity, image_rng(i))
        names.append(name)
    source = f"{DIGITS_C_PREFIX}:{target}:{corruption}:{severity}"
    key = f"{DIGITS_C_PREFIX}:{corruption}:{severity}@{h}x{w}"  # the images only, as for the clean digits
    everything = ArrayImages(out, DIGITS_TARGETS[target][1](digit), key, (h, w), meta={"corruption": np.array(names)})
    log.debug("%s: %d images corrupted at %dx%d", source, len(out), h, w)
    return _split_digits(source, target, everything, digit, cfg, val_fraction, seed)


# -- arrays in memory --------------------------------------------------------------------------------
def from_arrays(train_images: np.ndarray, train_targets: Sequence[int], val_images: np.ndarray,
                val_targets: Sequence[int], labels: list[str], data_config: dict, *,
                input_size: tuple[int, int] | None = None, source: str = "arrays",
                augment: bool = True) -> TaskData:
    """A :class:`TaskData` from uint8 arrays already in memory (a notebook, another loader).

    Args:
        train_images: ``(N, H, W)`` grey or ``(N, H, W, 3)`` RGB uint8 images.
        train_targets: a class index per training image.
        val_images: the validation images, as ``train_images``.
        val_targets: a class index per validation image.
        labels: the class names; targets index into it.
        data_config: the backbone's timm data config.
        input_size: ``(H, W)`` to train at instead of the config's; images are resized on read.
        source: how to name the data in records and errors.
        augment: whether training augments by default.

    Returns:
        The two splits with the preprocessing.

    Raises:
        DataError: images that are not uint8 or of a wrong shape, targets outside the labels, fewer
            than 2 classes, a class without training images, or no validation images.
    """
    cfg = task_data_config(data_config, input_size)
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
    log.debug("%s: %d images in %d classes", root, len(paths), len(classes))
    return [d.name for d in classes], paths, names


def _folder_set(folder: Path, check: bool, key: str,
                index: dict[str, int] | None = None) -> tuple[list[str], FolderImages]:
    classes, paths, names = _scan(folder, check)
    if index is None:
        index = {c: i for i, c in enumerate(classes)}
    else:
        unknown = [c for c in classes if c not in index]
        if unknown:
            raise DataError(f"validation class folder {folder / unknown[0]} has no training folder in "
                            f"{folder.parent / 'train'}; rename or remove it")
    return classes, FolderImages(paths, np.array([index[n] for n in names], dtype=np.int64), key)


def image_folder(root: str | os.PathLike, data_config: dict, val_fraction: float = 0.2, seed: int = 0,
                 check_images: bool = True) -> TaskData:
    """Images in one folder per class: ``root/train/<class>/…`` + ``root/val/<class>/…``, or ``root/<class>/…``.

    Without a ``val/`` folder, a seeded stratified ``val_fraction`` of each class is held out.
    Files are taken by :data:`~subtune_edge.data.images.IMAGE_EXTENSIONS`, in subfolders too.

    Args:
        root: the folder.
        data_config: the backbone's timm data config (at the wanted input size).
        val_fraction: the share held out where there is no ``val/`` folder.
        seed: the hold-out's seed.
        check_images: read every file's header now (cheap) so that a bad or oversized file is
            refused before training starts, not minutes into it.

    Returns:
        The two splits; class labels are the folder names, sorted.

    Raises:
        DataError: ``root`` is not a folder; fewer than 2 classes; a class folder without images;
            an unreadable, non-image or decompression-bomb file; a ``val/`` class with no training
            folder; too few images to hold any out.
    """
    root = Path(root)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise DataError(f"data '{root}' {what} and is not one of {named_sources()}; "
                        "give {param} an image folder (one subfolder per class) or one of those names",
                        param="data_source")
    cfg = dict(data_config)
    key_base = f"folder:{root.resolve()}@{cfg['input_size'][1]}x{cfg['input_size'][2]}"
    train_dir, val_dir = root / "train", root / "val"
    if train_dir.is_dir():
        classes, everything = _folder_set(train_dir, check_images, key_base + "/train")
        check_classes(classes, everything.targets, str(train_dir))
        if val_dir.is_dir():
            _, val = _folder_set(val_dir, check_images, key_base + "/val", {c: i for i, c in enumerate(classes)})
            if not len(val):
                raise DataError(f"{val_dir} has no images; add a folder per class or remove {val_dir}")
            return TaskData(str(root), classes, everything, val, cfg)
    else:
        classes, everything = _folder_set(root, check_images, key_base)
        check_classes(classes, everything.targets, str(root))
    keep, held = stratified_split(everything.targets, val_fraction, seed)
    if not len(held):
        raise DataError(f"{root} is too small to hold out {val_fraction:.0%} for validation; add images or "
                        "give a val/ folder")
    train = everything.subset(keep, f"train{val_fraction}s{seed}")
    check_classes(classes, train.targets, str(root))
    return TaskData(str(root), classes, train, everything.subset(held, f"val{val_fraction}s{seed}"), cfg)
