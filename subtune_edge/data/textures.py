"""A natural-photo task that needs no download: which of scikit-image's bundled photographs a crop comes from.

scikit-image ships a few photographs inside its wheel (``skimage.data``; no pooch download):
textures (brick, grass, gravel, the moon's surface, coins) and scenes (the astronaut, the cat
Chelsea, coffee, a rocket, the cameraman). A crop of one of them at the input size is a sample;
its class is the photograph. This is a second domain beside the digits, for the paper's claim that
SubTuning works across domains.

No pixel is in both splits: every photograph is cut into a 2x2 grid, training crops lie entirely
inside the top-left and bottom-right cells, validation crops inside the other two (a checkerboard,
so both splits see the top and bottom, the left and right of every photograph). A crop is the input
size, shrunk (keeping its aspect) where a cell is smaller, then resized to the input size; where it
was cut is kept in the split's ``meta`` (``photo``, ``cell``, ``box`` as ``y0, x0, y1, x1``).
"""

from __future__ import annotations

import functools
import logging

import numpy as np
from PIL import Image

from ..errors import DataError
from .datasets import ArrayImages, TaskData

log = logging.getLogger(__name__)

TEXTURES_PREFIX = "skimage-textures"
TEXTURE_PHOTOS: tuple[str, ...] = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel",
                                   "moon", "rocket")
"""The classes: names of ``skimage.data`` functions whose photographs ship with scikit-image."""
DEFAULT_CROPS = 60
"""Crops per class, both splits together, unless the spec says ``skimage-textures:N``."""
MAX_CROPS = 1000
TRAIN_CELLS = (0, 3)
"""Grid cells (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right) training crops come from."""
VAL_CELLS = (1, 2)


def parse_textures(source: str) -> int:
    """The crops per class that ``skimage-textures[:N]`` asks for.

    Args:
        source: the spec as written.

    Returns:
        N, or :data:`DEFAULT_CROPS`.

    Raises:
        DataError: N is not a whole number in 2..1000, or there is more after it.
    """
    head, _, n = source.partition(":")
    if head != TEXTURES_PREFIX:
        raise DataError(f"'{source}' is not {TEXTURES_PREFIX}[:N]; set {{param}} to e.g. {TEXTURES_PREFIX}:60",
                        param="data_source")
    if not n:
        return DEFAULT_CROPS
    if not n.strip().isdigit() or not 2 <= int(n) <= MAX_CROPS:
        raise DataError(f"crops per class '{n}' in '{source}' is not a whole number in 2..{MAX_CROPS}; set {{param}} "
                        f"to e.g. {TEXTURES_PREFIX}:{DEFAULT_CROPS}", param="data_source")
    return int(n)


@functools.cache
def texture_photo(name: str) -> np.ndarray:
    """The bundled photograph ``name`` as read-only ``(H, W, 3)`` uint8 (greys repeated over RGB).

    Args:
        name: one of :data:`TEXTURE_PHOTOS`.

    Returns:
        The photograph.

    Raises:
        DataError: the installed scikit-image cannot give it offline.
    """
    import skimage.data  # optional: only this task needs scikit-image (~0.5 s to import)

    try:
        photo = np.asarray(getattr(skimage.data, name)())
    except Exception as exc:  # a missing function or file: say which, whatever scikit-image raised
        raise DataError(f"scikit-image's bundled photo '{name}' cannot be read ({type(exc).__name__}: {exc}); "
                        "reinstall scikit-image>=0.22, whose wheel ships it") from None
    if photo.dtype != np.uint8 or photo.ndim not in (2, 3):
        raise DataError(f"scikit-image's photo '{name}' is {photo.dtype} {photo.shape}, not a uint8 image; "
                        "reinstall scikit-image>=0.22")
    photo = np.repeat(photo[..., None], 3, axis=2) if photo.ndim == 2 else photo[..., :3]
    photo = np.ascontiguousarray(photo)
    photo.setflags(write=False)
    return photo


def texture_cells(shape: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """The 2x2 grid of a photograph of ``shape``: four ``(y0, x0, y1, x1)`` boxes, end exclusive.

    Args:
        shape: the photograph's ``(H, W, ...)``.

    Returns:
        Top-left, top-right, bottom-left, bottom-right; they tile the photograph without overlap.
    """
    h, w = int(shape[0]), int(shape[1])
    my, mx = h // 2, w // 2
    return [(0, 0, my, mx), (0, mx, my, w), (my, 0, h, mx), (my, mx, h, w)]


def _crop_size(cells: list[tuple[int, int, int, int]], size: tuple[int, int]) -> tuple[int, int]:
    """The input size, shrunk (aspect kept) until it fits the smallest cell."""
    ch = min(y1 - y0 for y0, _, y1, _ in cells)
    cw = min(x1 - x0 for _, x0, _, x1 in cells)
    scale = min(1.0, ch / size[0], cw / size[1])
    return max(1, int(size[0] * scale)), max(1, int(size[1] * scale))


def _crops(photo: np.ndarray, cells: tuple[int, ...], n: int, size: tuple[int, int],
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` crops from ``cells`` of ``photo`` at ``size``: images, the cell of each, the box of each."""
    grid = texture_cells(photo.shape)
    crop_h, crop_w = _crop_size(grid, size)
    images = np.empty((n, size[0], size[1], 3), dtype=np.uint8)
    cell_of = np.empty(n, dtype=np.int64)
    boxes = np.empty((n, 4), dtype=np.int64)
    for k in range(n):
        cell = cells[int(rng.integers(len(cells)))]
        y0, x0, y1, x1 = grid[cell]
        top = int(rng.integers(y0, y1 - crop_h + 1))
        left = int(rng.integers(x0, x1 - crop_w + 1))
        crop = photo[top:top + crop_h, left:left + crop_w]
        if (crop_h, crop_w) != size:  # resized alone: no pixel from outside the box bleeds in
            crop = np.asarray(Image.fromarray(crop).resize((size[1], size[0]), Image.Resampling.BICUBIC))
        images[k], cell_of[k], boxes[k] = crop, cell, (top, left, top + crop_h, left + crop_w)
    return images, cell_of, boxes


def skimage_textures(crops_per_class: int, data_config: dict, val_fraction: float = 0.2, seed: int = 0) -> TaskData:
    """Crops of scikit-image's bundled photographs; the class is the photograph (see the module's notes).

    Each class gets ``crops_per_class`` crops, ``val_fraction`` of them (at least one) from the
    validation cells, the rest from the training cells; crops within a split may overlap. Every
    draw comes from a generator seeded by ``seed`` and the class, so one spec gives the same
    pixels in every process.

    Args:
        crops_per_class: crops per photograph, both splits together, 2..1000.
        data_config: the backbone's timm data config at the wanted input size.
        val_fraction: the share of each class's crops cut from the validation cells.
        seed: the crops' seed.

    Returns:
        The task; ``train.meta`` / ``val.meta`` hold ``photo``, ``cell`` and ``box`` per crop.

    Raises:
        DataError: a count outside 2..1000, ``val_fraction`` outside (0, 1), or a photograph the
            installed scikit-image lacks.
    """
    if not 2 <= int(crops_per_class) <= MAX_CROPS:
        raise DataError(f"{crops_per_class} crops per class is not in 2..{MAX_CROPS}; set {{param}} to e.g. "
                        f"{TEXTURES_PREFIX}:{DEFAULT_CROPS}", param="data_source")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"validation fraction must be between 0 and 1, got {val_fraction}; set {{param}} to e.g. 0.2",
                        param="val_fraction")
    cfg = dict(data_config, crop_pct=1.0, crop_mode="center")
    size = (int(cfg["input_size"][1]), int(cfg["input_size"][2]))
    n_val = min(max(1, int(round(crops_per_class * val_fraction))), crops_per_class - 1)
    n_train = crops_per_class - n_val
    parts: dict[str, list] = {"train": [], "val": []}
    for c, name in enumerate(TEXTURE_PHOTOS):
        photo = texture_photo(name)
        for split, cells, n, stream in (("train", TRAIN_CELLS, n_train, 0), ("val", VAL_CELLS, n_val, 1)):
            images, cell_of, boxes = _crops(photo, cells, n, size, np.random.default_rng([seed, c, stream]))
            parts[split].append((images, np.full(n, c, dtype=np.int64), cell_of, boxes))
    key = f"{TEXTURES_PREFIX}:{crops_per_class}:v{val_fraction}s{seed}@{size[0]}x{size[1]}"
    sets = {}
    for split, chunks in parts.items():
        images, targets, cell_of, boxes = (np.concatenate(x) for x in zip(*chunks))
        sets[split] = ArrayImages(images, targets, f"{key}/{split}", size,
                                  meta={"photo": targets.copy(), "cell": cell_of, "box": boxes})
    log.debug("%s: %d train and %d val crops per class at %dx%d", key, n_train, n_val, *size)
    # augmentation off by default, as for the digits: the random crops already vary the samples, and
    # deterministic inputs let the prefix cache compute the frozen units once
    return TaskData(f"{TEXTURES_PREFIX}:{crops_per_class}", list(TEXTURE_PHOTOS), sets["train"], sets["val"], cfg,
                    augment_default=False, aug_args={"hflip": 0.5, "scale": (0.5, 1.0)})
