"""The one place image files are opened: training folders, ``predict`` and export verification.

Reading an image is reading untrusted input. A 24 KB PNG can declare 14000x14000 pixels and
take gigabytes to decode, so the declared size is checked against :data:`MAX_PIXELS` from the
header, before any pixel is decoded. Only the raster formats in :data:`FORMATS` are opened: Pillow
would otherwise also identify, say, EPS files, whose decoding runs Ghostscript. Images that are
not 8-bit RGB are brought there by what they hold, not clipped: 16-bit greys are scaled by their
bit depth (65535 -> 255) instead of saturating at 255, float images in 0..1 are scaled by 255
instead of rounding to 0 or 1, palette / grey / 1-bit / CMYK images are converted, and alpha is
dropped (the models see no transparency). What cannot be read, or whose range cannot be known,
is refused with one :class:`~subtune_edge.errors.DataError` line naming the file.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from timm.data.readers.img_extensions import get_img_extensions

from ..errors import DataError

log = logging.getLogger(__name__)

#: File name endings taken as images when a folder is scanned: timm's list plus BMP and WebP.
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(sorted(set(get_img_extensions()) | {".bmp", ".webp"}))
#: Pillow formats that are opened at all (by content, whatever the file is called).
FORMATS: tuple[str, ...] = ("PNG", "JPEG", "MPO", "BMP", "DIB", "WEBP", "TIFF", "GIF", "PPM", "TGA")
#: The most pixels an image may declare: Pillow's own default limit (about 89.5 megapixels).
MAX_PIXELS = 89_478_485

_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)
_UNREADABLE = (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether a folder scan takes ``path`` as an image: a known extension, not a hidden file.

    Args:
        path: a file name or path; only its name is looked at.

    Returns:
        True for ``cat.JPG``, False for ``notes.txt`` or ``.cat.jpg`` (editors' and OS droppings).
    """
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Every image file under ``folder``, recursively, in a stable order.

    The order is that of the path strings, so that seeded splits of a folder are the same on
    every machine and in every release.

    Args:
        folder: the folder to scan.

    Returns:
        Paths of the files :func:`is_image_file` accepts, sorted by their string form.
    """
    found = (Path(dirpath) / f for dirpath, _, files in os.walk(folder) for f in files if is_image_file(f))
    return sorted(found, key=str)


def _formats() -> list[str]:
    """:data:`FORMATS` that this Pillow build can open (plugins register on first use)."""
    Image.init()
    return [f for f in FORMATS if f in Image.OPEN]


def _open(path: Path, max_pixels: int) -> Image.Image:
    """Open (header only) and check the declared size; the caller closes the image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path, formats=_formats())
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise DataError(f"image {path} is a folder, not an image file; give the files in it") from None
    except _BOMB:
        limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
        raise DataError(f"image {path} declares more than {limit:,} pixels (a decompression bomb?); "
                        "shrink it or remove the file") from None
    except UnidentifiedImageError:
        raise DataError(f"cannot read image {path} (not a {'/'.join(FORMATS)} file); "
                        "fix or remove the file") from None
    except _UNREADABLE as exc:
        raise DataError(f"cannot read image {path} ({type(exc).__name__}: {exc}); fix or remove the file") from None
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise DataError(f"image {path} declares {width}x{height} pixels, more than {max_pixels:,} "
                        "(a decompression bomb?); shrink it or remove the file")
    if width < 1 or height < 1:
        img.close()
        raise DataError(f"image {path} has no pixels ({width}x{height}); fix or remove the file")
    return img


def check_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Check a file the way :func:`read_image` does, from its header only (cheap, no decoding).

    Catches missing, empty, non-image and oversized files before minutes of training are spent;
    a file truncated after its header is only caught when it is read.

    Args:
        path: the image file.
        max_pixels: the most pixels (width x height) the file may declare.

    Returns:
        The image's (width, height).

    Raises:
        DataError: the file is missing, not an image in :data:`FORMATS`, or too large.
    """
    with _open(Path(path), max_pixels) as img:
        return img.size


def read_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Read an image file as the 8-bit RGB image every model input is made from.

    Args:
        path: the image file (PNG, JPEG, BMP, WebP, TIFF, GIF, PPM, TGA).
        max_pixels: the most pixels (width x height) the file may declare; checked before decoding.
            Pillow's own ``Image.MAX_IMAGE_PIXELS`` still applies above it.

    Returns:
        A decoded PIL image in mode ``RGB``, detached from the file.

    Raises:
        DataError: the file is missing, not an image, truncated, too large, or holds values whose
            range cannot be known (floats outside 0..1, negative integers).
    """
    path = Path(path)
    with _open(path, max_pixels) as img:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                img.load()
                rgb = to_rgb(img, str(path))
            for w in caught:
                log.debug("%s: %s", path, w.message)
        except DataError:
            raise
        except _BOMB:
            raise DataError(f"image {path} decodes to more pixels than {max_pixels:,} (a decompression bomb?); "
                            "shrink it or remove the file") from None
        except _UNREADABLE as exc:
            raise DataError(f"cannot read image {path} ({type(exc).__name__}: {exc}); "
                            "fix or remove the file") from None
    return rgb


def to_rgb(img: Image.Image, name: str = "image") -> Image.Image:
    """Bring a decoded PIL image of any mode to 8-bit RGB by what its values mean.

    Also for images callers already hold (``predict`` on PIL images), so that both paths agree.

    Args:
        img: a PIL image of any mode.
        name: how to name the image in an error (its path, where there is one).

    Returns:
        An image in mode ``RGB``; ``img`` itself is not changed.

    Raises:
        DataError: a float image outside 0..1 or with NaN/inf, an integer image with negative
            values or beyond 16 bits, or a mode Pillow cannot convert.
    """
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        return Image.fromarray(_grey_to_uint8(img, name)).convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # the palette's transparency, then dropped below like any alpha
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise DataError(f"{name} has pixel mode {mode}, which cannot be converted to RGB ({exc}); "
                        "save it as 8-bit RGB or grey") from None


def _declared_bits(img: Image.Image) -> int | None:
    """The bits per sample the file declares for a mode-I image, where the decoder says (e.g. I;16B)."""
    for tile in getattr(img, "tile", None) or []:
        args = tile.args if hasattr(tile, "args") else tile[3]
        raw = args[0] if isinstance(args, tuple) else args
        if isinstance(raw, str) and raw.startswith("I;16"):
            return 16
    bits = getattr(img, "tag_v2", {}).get(258) if hasattr(img, "tag_v2") else None
    if bits:
        return int(bits[0] if isinstance(bits, tuple) else bits)
    return None


def _grey_to_uint8(img: Image.Image, name: str) -> np.ndarray:
    """16-bit, 32-bit integer or float greys as uint8, scaled by bit depth (ints) or by 255 (floats)."""
    arr = np.asarray(img)  # float32 or (u)int16/int32: no wider copies of a large image
    if img.mode == "F":
        if not np.isfinite(arr).all():
            raise DataError(f"float image {name} holds NaN or infinite values; fix or remove the file")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(f"float image {name} holds values {lo:g}..{hi:g}, outside 0..1, so its range is "
                            "unknown; scale it to 0..1 or save it as 8- or 16-bit")
        return np.rint(arr.astype(np.float32) * np.float32(255.0)).astype(np.uint8)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise DataError(f"image {name} holds negative values ({lo}..{hi}), so its range is unknown; "
                        "save it as unsigned 8- or 16-bit")
    bits = 16 if img.mode in _SIXTEEN_BIT else _declared_bits(img)
    if bits is None or bits > 16:
        # 32-bit integers: the smallest common depth holding the values (8 or 16 bits)
        if hi > 65535:
            raise DataError(f"image {name} holds values up to {hi}, beyond 16 bits, so its range is unknown; "
                            "save it as 8- or 16-bit")
        bits = 8 if hi <= 255 else 16
    if bits <= 8:
        return np.minimum(arr, 255).astype(np.uint8)
    top = (1 << bits) - 1
    return np.rint(np.minimum(arr, top).astype(np.float32) * np.float32(255.0 / top)).astype(np.uint8)
