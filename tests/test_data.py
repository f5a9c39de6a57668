import numpy as np
import pytest
import torch
from PIL import Image

from subtune_edge.data import (
    DataSpec,
    from_arrays,
    image_folder,
    load_data,
    stratified_folds,
    stratified_sample,
    stratified_split,
)
from subtune_edge.errors import DataError

from .helpers import backbone_for

SIZE = 32


@pytest.fixture(scope="module")
def cfg():
    return backbone_for("resnet18").data_config


def test_digits_targets_make_three_tasks_on_shared_splits(cfg):
    tasks = {t: load_data(DataSpec(f"digits:{t}", (SIZE, SIZE)), cfg) for t in ("digit", "parity", "ge5")}
    assert tasks["digit"].labels == [str(i) for i in range(10)]
    assert tasks["parity"].labels == ["even", "odd"] and tasks["ge5"].labels == ["<5", ">=5"]
    digit, parity, ge5 = tasks["digit"], tasks["parity"], tasks["ge5"]
    assert len(digit.train) + len(digit.val) == 1797
    assert digit.train.key == parity.train.key  # same images, same split (targets aside)
    assert digit.val.base is digit.train.base and len(digit.train.base) == 1797
    np.testing.assert_array_equal(digit.val.base_indices, parity.val.base_indices)
    np.testing.assert_array_equal(parity.train.targets, digit.train.targets % 2)
    np.testing.assert_array_equal(ge5.val.targets, (digit.val.targets >= 5).astype(int))
    x, y = digit.val_set()[0]
    assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32 and 0 <= y < 10
    assert digit.data_config["input_size"] == (3, SIZE, SIZE) and digit.data_config["crop_pct"] == 1.0
    assert not digit.augment_default
    # deterministic: built again, the same split
    again = load_data(DataSpec("digits:digit", (SIZE, SIZE)), cfg)
    torch.testing.assert_close(again.val_set()[5][0], digit.val_set()[5][0])


def test_digit_images_are_real_upscaled_digits(cfg):
    data = load_data(DataSpec("digits:digit", (SIZE, SIZE)), cfg)
    img = np.asarray(data.train.image(0))
    assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
    assert img.max() > 200 and img.min() < 30  # ink on a dark background
    assert (img[..., 0] == img[..., 1]).all()  # grey as RGB


def test_train_samples_and_kfold(cfg):
    data = load_data(DataSpec("digits:digit", (SIZE, SIZE), train_samples=100), cfg)
    assert np.bincount(data.train.targets).tolist() == [10] * 10
    folds = [load_data(DataSpec("digits:digit", (SIZE, SIZE), train_samples=100, folds=4, fold=i), cfg)
             for i in range(4)]
    assert [len(f.val) for f in folds] == [25] * 4
    assert all(len(f.train) == 75 for f in folds)
    small = load_data(DataSpec("digits:digit", (SIZE, SIZE), val_samples=30), cfg)
    assert np.bincount(small.val.targets).tolist() == [3] * 10
    with pytest.raises(DataError, match="fold 4 is not one of 0..3"):
        load_data(DataSpec("digits:digit", (SIZE, SIZE), folds=4, fold=4), cfg)


def test_split_helpers_are_stratified_disjoint_and_seeded():
    targets = np.repeat(np.arange(3), [10, 20, 30])
    keep, held = stratified_split(targets, 0.2, seed=1)
    assert set(keep).isdisjoint(held) and len(keep) + len(held) == 60
    assert np.bincount(targets[held]).tolist() == [2, 4, 6]
    assert (stratified_split(targets, 0.2, seed=1)[1] == held).all()
    assert not (stratified_split(targets, 0.2, seed=2)[1] == held).all()
    sample = stratified_sample(targets, 12, seed=0)
    assert np.bincount(targets[sample]).tolist() == [2, 4, 6]
    folds = stratified_folds(targets, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(60))


def test_transforms_follow_the_paper_and_the_data_config(cfg):
    data = load_data(DataSpec("digits:parity", (SIZE, SIZE)), cfg)
    train_names = [type(t).__name__ for t in data.transform(training=True).transforms]
    eval_names = [type(t).__name__ for t in data.transform(training=False).transforms]
    assert train_names[0] == "RandomResizedCropAndInterpolation" and "ColorJitter" not in train_names
    assert eval_names[:2] == ["Resize", "CenterCrop"]


def _write_folder(root, classes, n=3, size=20):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_image_folder_with_train_and_val(tmp_path, cfg):
    _write_folder(tmp_path / "train", ["cat", "dog"], n=4)
    _write_folder(tmp_path / "val", ["cat", "dog"], n=2)
    data = image_folder(tmp_path, dict(cfg, input_size=(3, SIZE, SIZE)))
    assert data.labels == ["cat", "dog"] and len(data.train) == 8 and len(data.val) == 4
    x, y = data.train_set(augment=True)[0]
    assert x.shape == (3, SIZE, SIZE)
    assert data.augment_default


def test_image_folder_split_by_fraction(tmp_path, cfg):
    _write_folder(tmp_path, ["a", "b", "c"], n=5)
    data = load_data(DataSpec(str(tmp_path), (SIZE, SIZE), val_fraction=0.4, split_seed=3), cfg)
    assert len(data.val) == 6 and len(data.train) == 9
    assert sorted(set(data.val.targets.tolist())) == [0, 1, 2]


def test_folder_errors_name_the_problem(tmp_path, cfg):
    one = tmp_path / "one"
    _write_folder(one, ["only"])
    with pytest.raises(DataError, match=r"has 1 class \(only\); a classifier needs at least 2"):
        image_folder(one, cfg)
    empty = tmp_path / "empty"
    _write_folder(empty, ["a", "b"])
    (empty / "c").mkdir()
    with pytest.raises(DataError, match=f"class folder {empty / 'c'} has no images"):
        image_folder(empty, cfg)
    bad = tmp_path / "bad"
    _write_folder(bad, ["a", "b"])
    (bad / "b" / "broken.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=f"cannot read image {bad / 'b' / 'broken.png'}"):
        image_folder(bad, cfg)
    with pytest.raises(DataError, match="is neither a folder nor one of digits:digit"):
        load_data(DataSpec(str(tmp_path / "missing")), cfg)
    with pytest.raises(DataError, match="unknown digits target 'odd'"):
        load_data(DataSpec("digits:odd"), cfg)


def test_truncated_image_fails_on_read_naming_the_file(tmp_path, cfg):
    _write_folder(tmp_path, ["a", "b"], n=4, size=64)
    victim = tmp_path / "a" / "0.png"
    victim.write_bytes(victim.read_bytes()[:80])  # header intact, pixels cut
    data = image_folder(tmp_path, dict(cfg, input_size=(3, SIZE, SIZE)), val_fraction=0.25)
    ds = data.train_set(augment=False)
    with pytest.raises(DataError, match="cannot read image .*0.png"):
        for i in range(len(ds)):
            ds[i]


def test_arrays(cfg):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (12, 10, 10, 3), dtype=np.uint8)
    data = from_arrays(x[:8], [0, 1] * 4, x[8:], [0, 1, 1, 0], ["no", "yes"], cfg, input_size=(SIZE, SIZE))
    assert data.num_classes == 2 and data.val_set()[0][0].shape == (3, SIZE, SIZE)
    with pytest.raises(DataError, match="at least 2"):
        from_arrays(x[:8], [0] * 8, x[8:], [0] * 4, ["no"], cfg)
    with pytest.raises(DataError, match="must be uint8"):
        from_arrays(x[:8].astype(float), [0, 1] * 4, x[8:], [0, 1, 1, 0], ["no", "yes"], cfg)
