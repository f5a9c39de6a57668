"""Four common corruptions of CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019), seeded, on uint8 images.

The paper claims SubTuning beats finetuning on corrupted data; :func:`~subtune_edge.data.sources.digits_c`
applies these to the bundled digits to check it offline. The severity constants are those of the
authors' ``make_cifar_c.py`` (severities 1..5). Two deliberate differences from that script:

* the random draws come from a generator the caller seeds per image (:func:`image_rng`), so the
  same dataset spec always gives the same pixels, in any process;
* the blur's sigma is scaled by the image's size over CIFAR's 32 px, so a severity blurs the same
  share of the content at any input size (the digits are upscaled to the input size first).

Noise, contrast and JPEG apply as in the script, at the image's own resolution. Results are
rounded (the script truncates) and clipped to 0..255.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

CORRUPTIONS: tuple[str, ...] = ("gaussian_noise", "gaussian_blur", "contrast", "jpeg_compression")
"""The corruptions, by their CIFAR-10-C names."""
MIXED = "mixed"
"""One of :data:`CORRUPTIONS` per image, drawn by a seeded generator."""
ALIASES = {"noise": "gaussian_noise", "blur": "gaussian_blur", "jpeg": "jpeg_compression"}
"""Short names accepted for :data:`CORRUPTIONS`."""
SEVERITIES = (1, 2, 3, 4, 5)
DEFAULT_SEVERITY = 3
REFERENCE_SIZE = 32
"""CIFAR's image side, the size the blur constants are for."""
CORRUPTION_SEED = 0
"""The corrupted images are a fixed dataset (as CIFAR-10-C is): their draws do not follow the split seed."""

# make_cifar_c.py: noise std (of 0..1 pixels), blur sigma (px at 32 px), contrast factor, JPEG quality
PARAMETERS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "jpeg_compression": (80, 65, 58, 50, 40),
}


def image_rng(index: int, stream: int = 0) -> np.random.Generator:
    """The generator for image ``index`` (``stream`` 0: the corruption's draws, 1: the ``mixed`` choice).

    Args:
        index: the image's index in its dataset.
        stream: which of the image's independent streams.

    Returns:
        A generator that depends on nothing else, so every process draws the same.
    """
    return np.random.default_rng([CORRUPTION_SEED, stream, int(index)])


def mixed_choice(index: int) -> str:
    """The corruption ``mixed`` applies to image ``index``."""
    return CORRUPTIONS[int(image_rng(index, 1).integers(len(CORRUPTIONS)))]


def gaussian_blur(x: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """A Gaussian blur of the two image axes, edges repeated (scipy's ``gaussian_filter``, mode ``nearest``).

    Written out so that the data package does not import scipy at start-up.

    Args:
        x: ``(H, W)`` or ``(H, W, C)`` floats.
        sigma: the kernel's standard deviation in pixels.
        truncate: the kernel's radius in sigmas.

    Returns:
        The blurred array, float32.
    """
    radius = int(truncate * sigma + 0.5)
    if radius == 0:
        return x.astype(np.float32)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel = (kernel / kernel.sum()).astype(np.float32)
    out = x.astype(np.float32)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        window = [slice(None)] * out.ndim
        acc = np.zeros_like(out)
        for i, w in enumerate(kernel):
            window[axis] = slice(i, i + n)
            acc += w * padded[tuple(window)]
        out = acc
    return out


def corrupt(image: np.ndarray, corruption: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """``image`` under ``corruption`` at ``severity``.

    Args:
        image: ``(H, W)`` grey or ``(H, W, 3)`` RGB uint8.
        corruption: one of :data:`CORRUPTIONS` (not ``mixed``: pick with :func:`mixed_choice`).
        severity: 1..5.
        rng: the image's generator (only the noise draws from it).

    Returns:
        A uint8 array of the same shape.

    Raises:
        ValueError: an unknown corruption or severity (callers check specs first, with a
            :class:`~subtune_edge.errors.DataError`).
    """
    if corruption not in PARAMETERS or severity not in SEVERITIES:
        raise ValueError(f"no corruption {corruption!r} at severity {severity!r}")
    c = PARAMETERS[corruption][severity - 1]
    if corruption == "jpeg_compression":
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=int(c))
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            return np.asarray(decoded.convert("L" if image.ndim == 2 else "RGB"), dtype=np.uint8).copy()
    x = image.astype(np.float32) / 255.0
    if corruption == "gaussian_noise":
        x = x + rng.normal(scale=c, size=x.shape).astype(np.float32)
    elif corruption == "gaussian_blur":
        sigma = c * min(image.shape[:2]) / REFERENCE_SIZE
        x = gaussian_blur(x, sigma)
    else:  # contrast: towards the image's mean, per channel
        means = x.mean(axis=(0, 1), keepdims=True)
        x = (x - means) * c + means
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
