"""The inputs an export is verified on: a fixed seeded batch, and real images where available.

Random normal inputs exercise every weight; real photos, prepared exactly as an app prepares them
(:func:`subtune_edge.runtime.preprocess`), put activations in the range the model meets in use.
The photos come from scikit-image's bundled data (no download) or from the user's files, which are
read by :mod:`subtune_edge.data.images` (size-checked from the header before any decoding).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import skimage.data

from subtune_edge.data.images import check_image, is_image_file
from subtune_edge.errors import ExportError
from subtune_edge.runtime import preprocess

SEED = 0
SEEDED_BATCH = 4
SAMPLE_IMAGES = ("astronaut", "coffee", "chelsea", "rocket")


@dataclass
class InputBatch:
    kind: str             # "seeded" or "images"
    array: np.ndarray     # NCHW float32
    source: str           # how to rebuild it: the seed, or the image names

    def to_json(self) -> dict:
        return {"kind": self.kind, "batch": int(len(self.array)), "source": self.source}


def seeded_batch(n: int, input_size: tuple[int, int], seed: int = SEED) -> np.ndarray:
    h, w = input_size
    return np.random.default_rng(seed).standard_normal((n, 3, h, w)).astype(np.float32)


def sample_images() -> list[tuple[str, np.ndarray]]:
    """scikit-image's bundled photos as (name, HxWx3 uint8); those missing from this install are skipped."""
    out = []
    for name in SAMPLE_IMAGES:
        try:
            out.append((name, getattr(skimage.data, name)()))
        except Exception:  # a data file missing from this install: verify on the others
            continue
    return out


def image_files(paths: list[str | Path]) -> list[Path]:
    """Files given by the user: image files, or folders whose image files are taken (sorted).

    Each file's header is checked (:func:`~subtune_edge.data.images.check_image`), so a missing,
    non-image or decompression-bomb file is refused before any export work.

    Raises:
        ExportError: a path that does not exist.
        DataError: a file that is not a readable image of acceptable size.
    """
    files: list[Path] = []
    for p in (Path(p) for p in paths):
        if p.is_dir():
            files.extend(sorted((f for f in p.rglob("*") if f.is_file() and is_image_file(f)), key=str))
        elif p.is_file():
            files.append(p)
        else:
            raise ExportError(f"verification image {p} does not exist; check {{param}}", param="images")
    for f in files:
        check_image(f)
    return files


def fit_batch(array: np.ndarray, batch: tuple[int, int]) -> list[np.ndarray]:
    """Split into chunks of at most max, padding the last to at least min (by repeating rows)."""
    lo, hi = batch
    chunks = []
    for start in range(0, len(array), hi):
        chunk = array[start:start + hi]
        if len(chunk) < lo:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], lo - len(chunk), axis=0)])
        chunks.append(np.ascontiguousarray(chunk))
    return chunks


def verification_batches(preprocessing: dict, input_size: tuple[int, int], batch: tuple[int, int],
                         images: list[str | Path] | None = None, use_samples: bool = True) -> list[InputBatch]:
    """The seeded batch, then real images (the user's if given, else the bundled samples)."""
    lo, hi = batch
    n = min(max(SEEDED_BATCH, lo), hi)
    batches = [InputBatch("seeded", seeded_batch(n, input_size), f"numpy default_rng({SEED}).standard_normal")]
    named: list[tuple[str, object]]
    if images:
        named = [(p.name, p) for p in image_files(images)]
        if not named:
            raise ExportError(f"no image files in {', '.join(map(str, images))}; check {{param}}", param="images")
    else:
        named = list(sample_images()) if use_samples else []
    if named:
        config = {**preprocessing, "input_size": (3, *input_size)}
        array = preprocess([img for _, img in named], config)
        label = ", ".join(name for name, _ in named)
        for chunk in fit_batch(array, (lo, hi)):
            batches.append(InputBatch("images", chunk, label))
    return batches
