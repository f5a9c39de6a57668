"""The one image reader: bombs refused before decoding, every pixel mode brought to 8-bit RGB by
what it means, bad files refused in one line naming them. Real files written with PIL (and one
16-bit RGB PNG written by hand: PIL cannot write those)."""

import struct
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from subtune_edge.cli import main
from subtune_edge.data import (
    IMAGE_EXTENSIONS,
    check_image,
    image_folder,
    is_image_file,
    list_images,
    read_image,
    to_rgb,
)
from subtune_edge.errors import DataError

from .helpers import backbone_for


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """A 14000x14000 1-bit PNG: about 24 KB on disk, 196 megapixels declared."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (14000, 14000)).save(path, optimize=True)
    assert path.stat().st_size < 64_000
    return path


def _refused(path, match, **kw) -> str:
    with pytest.raises(DataError, match=match) as exc:
        read_image(path, **kw)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)
    return str(exc.value)


def test_decompression_bomb_is_refused_from_the_header(bomb):
    _refused(bomb, "declares more than 89,478,485 pixels .*decompression bomb.*; shrink it or remove the file")
    with pytest.raises(DataError, match="decompression bomb"):
        check_image(bomb)


def test_pixel_limit_can_be_lowered(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    assert check_image(path) == (100, 100)
    _refused(path, r"declares 100x100 pixels, more than 5,000", max_pixels=5000)


def test_decompression_bomb_in_tune_data_is_one_line_and_nonzero(tmp_path, bomb):
    data = tmp_path / "data"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(data / c / f"{i}.png")
    (data / "b" / "bomb.png").write_bytes(bomb.read_bytes())
    out = tmp_path / "tasks"
    result = CliRunner().invoke(main, ["tune", "resnet18", "--weights", "random", "--data", str(data), "--name", "x",
                                       "--blocks", "none", "--input-size", "32", "--epochs", "1", "--no-progress",
                                       "--task-dir", str(out)])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: image ") and "decompression bomb" in lines[0]
    assert str(data / "b" / "bomb.png") in lines[0]
    assert "Traceback" not in result.output and not isinstance(result.exception, (MemoryError, KeyError))
    assert not out.exists() or not any(out.iterdir())


def test_sixteen_bit_grey_png_is_scaled_by_its_bit_depth(tmp_path):
    values = np.array([[0, 257, 1000, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    img = read_image(path)
    assert img.mode == "RGB" and img.size == (5, 1)
    px = np.asarray(img)
    assert px[0, :, 0].tolist() == [0, 1, 4, 128, 255]  # round(v / 257), not clipped at 255
    assert (px[..., 0] == px[..., 2]).all()


def _png16_rgb(path, rgb: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG, chunk by chunk."""
    h, w, _ = rgb.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_sixteen_bit_rgb_png_keeps_its_colours(tmp_path):
    rgb = np.array([[[65535, 0, 32896], [1000, 20000, 65535]]], dtype=np.uint16)
    path = tmp_path / "rgb16.png"
    _png16_rgb(path, rgb)
    px = np.asarray(read_image(path)).astype(int)
    np.testing.assert_allclose(px, rgb / 257.0, atol=1)


def test_float_tiff_in_0_to_1_is_scaled_by_255(tmp_path):
    values = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    path = tmp_path / "f.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "F"
    px = np.asarray(read_image(path))
    assert px[0, :, 1].tolist() == [0, 64, 128, 255]  # not rounded to 0/1 (all black)


@pytest.mark.parametrize("values, match", [
    ([[0.0, 2.0, 300.0]], r"holds values 0\.\.300, outside 0\.\.1, so its range is unknown; scale it to 0\.\.1"),
    ([[0.0, np.nan, 1.0]], "holds NaN or infinite values"),
    ([[-0.5, 0.5, 1.0]], r"outside 0\.\.1"),
])
def test_float_images_of_unknown_range_are_refused(tmp_path, values, match):
    path = tmp_path / "f.tif"
    Image.fromarray(np.array(values, dtype=np.float32)).save(path)
    _refused(path, match)


@pytest.mark.parametrize("values, expected", [
    ([0, 128, 255], [0, 128, 255]),             # 8-bit values in a 32-bit file: as they are
    ([0, 257, 65535], [0, 1, 255]),             # 16-bit values: by 16 bits
])
def test_32_bit_integer_tiff_is_scaled_by_the_depth_its_values_need(tmp_path, values, expected):
    path = tmp_path / "i32.tif"
    Image.fromarray(np.array([values], dtype=np.int32)).save(path)
    assert Image.open(path).mode == "I"
    assert np.asarray(read_image(path))[0, :, 0].tolist() == expected


@pytest.mark.parametrize("values, match", [
    ([0, 70000], "holds values up to 70000, beyond 16 bits"),
    ([-5, 10], r"holds negative values \(-5\.\.10\)"),
])
def test_integer_images_of_unknown_range_are_refused(tmp_path, values, match):
    path = tmp_path / "i32.tif"
    Image.fromarray(np.array([values], dtype=np.int32)).save(path)
    _refused(path, match)


def test_other_modes_become_rgb_with_alpha_dropped(tmp_path):
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (4, 4), (10, 20, 30, 0)).save(rgba)
    assert np.asarray(read_image(rgba))[0, 0].tolist() == [10, 20, 30]
    la = tmp_path / "la.png"
    Image.new("LA", (4, 4), (77, 128)).save(la)
    assert np.asarray(read_image(la))[0, 0].tolist() == [77, 77, 77]
    bits = tmp_path / "one.png"
    one = Image.new("1", (4, 4), 0)
    one.putpixel((1, 1), 1)
    one.save(bits)
    px = np.asarray(read_image(bits))
    assert px[1, 1].tolist() == [255, 255, 255] and px[0, 0].tolist() == [0, 0, 0]
    pal = tmp_path / "pal.png"
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    p.info["transparency"] = 0
    p.save(pal, transparency=0)
    assert np.asarray(read_image(pal))[0, 0].tolist() == [200, 100, 50]
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(cmyk)  # red
    r, g, b = np.asarray(read_image(cmyk))[4, 4].tolist()
    assert r > 200 and g < 60 and b < 60
    assert to_rgb(Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))).getpixel((1, 0)) == (255, 255, 255)


@pytest.mark.parametrize("write, match", [
    (lambda p: p.write_bytes(b""), r"cannot read image .*x\.png \(not a PNG/JPEG/.*file\); fix or remove the file"),
    (lambda p: p.write_bytes(b"not an image at all"), r"cannot read image .*x\.png \(not a PNG"),
    (lambda p: p.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"), "not a PNG"),  # no Ghostscript
    (lambda p: _truncated(p), r"cannot read image .*x\.png \(OSError: image file is truncated"),
    (lambda p: p.mkdir(), r"image .*x\.png is a folder, not an image file"),
    (lambda p: None, r"image .*x\.png does not exist; check the path"),
])
def test_unreadable_files_are_one_line_naming_the_file(tmp_path, write, match):
    path = tmp_path / "x.png"
    write(path)
    _refused(path, match)


def _truncated(path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:2000])


def test_image_files_and_listing(tmp_path):
    assert {".png", ".jpg", ".jpeg", ".bmp", ".webp"} <= set(IMAGE_EXTENSIONS)
    assert is_image_file("a/B.JPG") and not is_image_file("a/.b.png") and not is_image_file("notes.txt")
    for name in ("b/2.png", "a/1.jpeg", "a.x/3.png", "a/.hidden.png", "a/readme.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [str(p.relative_to(tmp_path)) for p in list_images(tmp_path)]
    assert found == ["a.x/3.png", "a/1.jpeg", "b/2.png"]  # string order: the same splits everywhere


def test_training_folder_reads_sixteen_bit_images_scaled(tmp_path):
    cfg = dict(backbone_for("resnet18").data_config, input_size=(3, 16, 16))
    for c, level in (("dark", 8000), ("light", 60000)):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.full((16, 16), level + i, dtype=np.uint16)).save(tmp_path / c / f"{i}.png")
    data = image_folder(tmp_path, cfg, val_fraction=0.34)
    levels = {data.labels[t]: int(np.asarray(data.train.image(i)).max()) for i, t in enumerate(data.train.targets)}
    assert levels == {"dark": 31, "light": 233}  # 8000/257, 60000/257: not 255 for both
