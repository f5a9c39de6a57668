"""The harder offline data: corrupted digits (digits-c) and crops of scikit-image's photographs (skimage-textures).

Checked on the real data: the same spec gives the same pixels, the splits do not leak (digits-c
keeps the clean digits' split; no texture pixel is in both splits), corruptions really corrupt,
and higher severities corrupt more.
"""

import itertools
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from subtune_edge.cli import main
from subtune_edge.data import (
    CORRUPTIONS,
    TEXTURE_PHOTOS,
    DataSpec,
    corrupt,
    load_data,
    spec_key,
    texture_cells,
)
from subtune_edge.data.textures import TRAIN_CELLS, VAL_CELLS, texture_photo
from subtune_edge.errors import DataError
from subtune_edge.task import load_task

from .helpers import backbone_for

SIZE = 32
_CACHE: dict = {}


@pytest.fixture(scope="module")
def cfg():
    return backbone_for("resnet18").data_config


def _load(cfg, source, size=SIZE, **kw):
    key = (source, size, tuple(sorted(kw.items())))
    if key not in _CACHE:
        _CACHE[key] = load_data(DataSpec(source, (size, size), **kw), cfg)
    return _CACHE[key]


def _pixels(split) -> np.ndarray:
    return np.stack([np.asarray(split.image(i), dtype=np.int16) for i in range(len(split))])


# -- corrupted digits --------------------------------------------------------------------------------
def test_digits_c_spec_is_canonical_and_names_corruption_and_severity(cfg):
    assert DataSpec("digits-c").source == "digits-c:digit:mixed:3"
    assert DataSpec("digits-c:parity").source == "digits-c:parity:mixed:3"
    assert DataSpec("digits-c:ge5:jpeg").source == "digits-c:ge5:jpeg_compression:3"
    assert DataSpec("digits-c:digit:blur:5").source == "digits-c:digit:gaussian_blur:5"
    assert DataSpec.from_json(json.loads(json.dumps(DataSpec("digits-c:digit:noise").to_json()))).source == \
        "digits-c:digit:gaussian_noise:3"
    keys = {spec_key(DataSpec(f"digits-c:digit:contrast:{s}"), cfg) for s in (1, 2, 3)}
    keys |= {spec_key(DataSpec("digits-c:digit:blur:1"), cfg), spec_key(DataSpec("digits:digit"), cfg)}
    assert len(keys) == 5  # every corruption and severity is its own run-log / cache key
    assert spec_key(DataSpec("digits-c:digit"), cfg) == spec_key(DataSpec("digits-c:digit:mixed:3"), cfg)


@pytest.mark.parametrize("seed", [0, 3])
def test_digits_c_keeps_the_digits_split_and_is_deterministic(cfg, seed):
    clean = load_data(DataSpec("digits:digit", (SIZE, SIZE), split_seed=seed), cfg)
    data = load_data(DataSpec("digits-c:parity", (SIZE, SIZE), split_seed=seed), cfg)
    again = load_data(DataSpec("digits-c:parity:mixed:3", (SIZE, SIZE), split_seed=seed), cfg)
    assert data.source == "digits-c:parity:mixed:3" and data.labels == ["even", "odd"]
    for split in ("train", "val"):
        np.testing.assert_array_equal(getattr(data, split).base_indices, getattr(clean, split).base_indices)
        np.testing.assert_array_equal(getattr(data, split).targets, getattr(clean, split).targets % 2)
        np.testing.assert_array_equal(getattr(data, split).images, getattr(again, split).images)
    train, val = set(data.train.base_indices.tolist()), set(data.val.base_indices.tolist())
    assert not train & val and len(train | val) == 1797
    assert not data.augment_default and data.data_config["crop_pct"] == 1.0
    x, y = data.val_set()[0]
    assert tuple(x.shape) == (3, SIZE, SIZE) and y in (0, 1)


def test_each_corruption_changes_the_pixels_its_own_way(cfg):
    clean = _pixels(_load(cfg, "digits:digit").val)
    corrupted = {c: _pixels(_load(cfg, f"digits-c:digit:{c}:3").val) for c in CORRUPTIONS}
    for name, images in corrupted.items():
        assert images.shape == clean.shape
        assert np.abs(images - clean).mean() > 1.0, name  # really corrupted
        assert (images[..., 0] == images[..., 2]).all()  # still grey digits
    for a, b in itertools.combinations(CORRUPTIONS, 2):
        assert np.abs(corrupted[a] - corrupted[b]).mean() > 1.0, (a, b)
    # mixed gives each image exactly the corruption it records
    mixed = _load(cfg, "digits-c:digit:mixed:3").val
    assert set(mixed.meta["corruption"]) == set(CORRUPTIONS)
    for i in range(0, len(mixed), 17):
        np.testing.assert_array_equal(np.asarray(mixed.image(i)), corrupted[mixed.meta["corruption"][i]][i])


def test_digits_c_corrupts_the_clean_digits_as_upscaled_for_training(cfg):
    # blur at severity 1 is small: the corrupted image stays close to the very image digits: trains on
    clean = _pixels(_load(cfg, "digits:digit").val)
    blurred = _pixels(_load(cfg, "digits-c:digit:gaussian_blur:1").val)
    assert np.abs(blurred - clean).max() < 60 and np.abs(blurred - clean).mean() < 1.0


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_higher_severity_corrupts_more(cfg, corruption):
    clean = _pixels(_load(cfg, "digits:digit").val)
    damage = [np.abs(_pixels(_load(cfg, f"digits-c:digit:{corruption}:{s}").val) - clean).mean() for s in (1, 3, 5)]
    assert damage[0] < damage[1] < damage[2], damage


def test_corrupt_is_seeded_by_its_generator():
    img = np.tile(np.linspace(0, 255, 24, dtype=np.uint8), (24, 1))
    a = corrupt(img, "gaussian_noise", 3, np.random.default_rng(1))
    np.testing.assert_array_equal(a, corrupt(img, "gaussian_noise", 3, np.random.default_rng(1)))
    assert (a != corrupt(img, "gaussian_noise", 3, np.random.default_rng(2))).any()
    rgb = np.stack([img, 255 - img, img // 2], axis=-1)
    for c in CORRUPTIONS:
        out = corrupt(rgb, c, 5, np.random.default_rng(0))
        assert out.shape == rgb.shape and out.dtype == np.uint8 and (out != rgb).any(), c
    with pytest.raises(ValueError):
        corrupt(img, "contrast", 6, np.random.default_rng(0))


# -- the photo textures ------------------------------------------------------------------------------
def _masks(data) -> dict[tuple[str, int], np.ndarray]:
    """(split, photo) -> the photo's pixels that split's crops were cut from."""
    masks = {}
    for split in ("train", "val"):
        s = getattr(data, split)
        for photo, (y0, x0, y1, x1) in zip(s.meta["photo"], s.meta["box"]):
            shape = texture_photo(TEXTURE_PHOTOS[photo]).shape[:2]
            m = masks.setdefault((split, int(photo)), np.zeros(shape, bool))
            m[y0:y1, x0:x1] = True
    return masks


@pytest.mark.parametrize("size", [SIZE, 200])
def test_texture_crops_come_from_disjoint_regions(cfg, size):
    data = _load(cfg, "skimage-textures:20", size)
    assert data.labels == list(TEXTURE_PHOTOS) and data.source == "skimage-textures:20"
    assert np.bincount(data.train.targets).tolist() == [16] * 10 and np.bincount(data.val.targets).tolist() == [4] * 10
    for split, allowed in (("train", TRAIN_CELLS), ("val", VAL_CELLS)):
        s = getattr(data, split)
        np.testing.assert_array_equal(s.meta["photo"], s.targets)
        assert set(s.meta["cell"].tolist()) <= set(allowed)
        for photo, cell, (y0, x0, y1, x1) in zip(s.meta["photo"], s.meta["cell"], s.meta["box"]):
            cy0, cx0, cy1, cx1 = texture_cells(texture_photo(TEXTURE_PHOTOS[photo]).shape)[cell]
            assert cy0 <= y0 < y1 <= cy1 and cx0 <= x0 < x1 <= cx1  # entirely inside its cell
            assert min(y1 - y0, x1 - x0) >= min(size, 150)  # the input size, capped by the smallest cell
    masks = _masks(data)
    for photo in range(len(TEXTURE_PHOTOS)):
        assert not (masks["train", photo] & masks["val", photo]).any(), TEXTURE_PHOTOS[photo]


def test_texture_cells_tile_the_photo():
    for name in TEXTURE_PHOTOS:
        shape = texture_photo(name).shape
        cover = np.zeros(shape[:2], int)
        for y0, x0, y1, x1 in texture_cells(shape):
            cover[y0:y1, x0:x1] += 1
        assert (cover == 1).all(), name


def test_texture_crops_are_the_photo_pixels_and_seeded(cfg):
    data = _load(cfg, "skimage-textures:20")
    again = load_data(DataSpec("skimage-textures:20", (SIZE, SIZE)), cfg)
    other = load_data(DataSpec("skimage-textures:20", (SIZE, SIZE), split_seed=1), cfg)
    for split in ("train", "val"):
        np.testing.assert_array_equal(getattr(data, split).images, getattr(again, split).images)
        np.testing.assert_array_equal(getattr(data, split).meta["box"], getattr(again, split).meta["box"])
        assert (getattr(data, split).meta["box"] != getattr(other, split).meta["box"]).any()
    for i in range(0, len(data.val), 7):  # at 32 px no photo's cell is smaller than a crop: no resize
        (y0, x0, y1, x1), photo = data.val.meta["box"][i], texture_photo(TEXTURE_PHOTOS[data.val.targets[i]])
        np.testing.assert_array_equal(np.asarray(data.val.image(i)), photo[y0:y1, x0:x1])
    assert data.train.key != data.val.key != other.val.key


def test_texture_meta_follows_samples_and_folds(cfg):
    data = load_data(DataSpec("skimage-textures", (SIZE, SIZE), train_samples=30, folds=3, fold=1), cfg)
    assert DataSpec("skimage-textures").source == "skimage-textures:60"
    for s in (data.train, data.val):
        assert len(s.meta["box"]) == len(s) and (s.meta["photo"] == s.targets).all()
        y0, x0, y1, x1 = s.meta["box"][0]
        np.testing.assert_array_equal(np.asarray(s.image(0)), texture_photo(TEXTURE_PHOTOS[s.targets[0]])[y0:y1, x0:x1])


def test_tune_on_textures_writes_a_task(tmp_path):
    result = CliRunner().invoke(main, ["tune", "resnet18", "--weights", "random", "--input-size", "32", "--epochs", "1",
                                       "--data", "skimage-textures:10", "--blocks", "none", "--name", "tex",
                                       "--task-dir", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    task = load_task(tmp_path / "tex.safetensors")
    assert task.labels == list(TEXTURE_PHOTOS) and task.tuned_units == []
    assert task.training["samples"] == 80 and task.preprocessing["input_size"] == [3, 32, 32]
    assert 0 <= task.training["val_accuracy"] <= 1


# -- malformed specs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("source, expected", [
    ("digits-c:digit:fog", "unknown corruption 'fog' in 'digits-c:digit:fog'; use one of gaussian_noise, "
                           "gaussian_blur, contrast, jpeg_compression (or noise, blur, jpeg) or mixed: set "
                           "data_source to e.g. digits-c:digit:contrast"),
    ("digits-c:digit:contrast:6", "severity '6' in 'digits-c:digit:contrast:6' is not one of 1..5; set "
                                  "data_source to e.g. digits-c:digit:contrast:3"),
    ("digits-c:digit:blur:0", "severity '0'"),
    ("digits-c:digit:blur:high", "severity 'high'"),
    ("digits-c:odd", "unknown digits-c target 'odd' in 'digits-c:odd'; use one of digit, parity, ge5: set "
                     "data_source to e.g. digits-c:digit"),
    ("digits-c:digit:blur:3:x", "is not of the form digits-c:TARGET[:CORRUPTION[:SEVERITY]]"),
    ("skimage-textures:1", "crops per class '1' in 'skimage-textures:1' is not a whole number in 2..1000; set "
                           "data_source to e.g. skimage-textures:60"),
    ("skimage-textures:lots", "crops per class 'lots'"),
    ("skimage-textures:5000", "crops per class '5000'"),
])
def test_malformed_harder_specs_are_one_line_naming_the_fix(source, expected):
    with pytest.raises(DataError) as exc:
        DataSpec(source)
    assert expected in str(exc.value) and "\n" not in str(exc.value)
    assert exc.value.param == "data_source" and "set --data to e.g." in exc.value.render("--data")


def test_tune_with_a_bad_corruption_is_one_error_line(tmp_path):
    result = CliRunner().invoke(main, ["tune", "resnet18", "--weights", "random", "--data", "digits-c:digit:fog",
                                       "--name", "x", "--blocks", "none", "--input-size", "32", "--no-progress",
                                       "--task-dir", str(tmp_path)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith("error: unknown corruption 'fog'") and "set --data to e.g." in lines[0]
    assert not any(tmp_path.iterdir())


def test_digits_c_upscales_as_the_clean_digits_do(cfg):
    """The corruption starts from exactly the image ``digits:`` trains on (grey resize == RGB resize)."""
    clean = _load(cfg, "digits:digit").val
    for i in (0, 5, 50):
        small = clean.images[i]
        up = np.asarray(Image.fromarray(small, "L").resize((SIZE, SIZE), Image.Resampling.BICUBIC))
        np.testing.assert_array_equal(up, np.asarray(clean.image(i))[..., 0])
