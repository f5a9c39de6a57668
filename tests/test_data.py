import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from subtune_edge.cli import main
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
    with pytest.raises(DataError, match="does not exist and is not one of digits:digit"):
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


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("make, expected", [
    (lambda root: "digits:nope", r"unknown digits target 'nope'; use one of digits:digit, digits:parity, digits:ge5"),
    (lambda root: str(root / "missing"), r"data '.*missing' does not exist and is not one of digits:digit.*; "
                                         r"give data_source an image folder"),
    (lambda root: _file(root / "file.png"), r"data '.*file.png' is not a folder .*give data_source an image folder"),
    (lambda root: _mkdir(root / "empty"), r"empty has 0 classes \(none\); a classifier needs at least 2: add a folder"),
    (lambda root: _flat(root / "flat"), r"flat has 0 classes \(none\); a classifier needs at least 2: add a folder"),
    (lambda root: _classes(root / "one", ["only"]), r"one has 1 class \(only\); a classifier needs at least 2"),
    (lambda root: _classes(root / "tiny", ["a", "b"], n=1), r"tiny is too small to hold out 20% for validation; add"),
    (lambda root: _stray_val(root / "stray"), r"validation class folder .*stray/val/c has no training folder in "
                                              r".*stray/train; rename or remove it"),
])
def test_malformed_data_specs_give_one_line_naming_problem_and_fix(tmp_path, cfg, make, expected):
    with pytest.raises(DataError, match=expected) as exc:
        load_data(DataSpec(make(tmp_path), (SIZE, SIZE)), cfg)
    _one_line(exc)


def test_sample_and_fold_errors_name_the_parameter(cfg):
    with pytest.raises(DataError, match="set train_samples to at least 10") as exc:
        load_data(DataSpec("digits:digit", (SIZE, SIZE), train_samples=5), cfg)
    assert exc.value.render("--train-samples").endswith("set --train-samples to at least 10")
    with pytest.raises(DataError, match=r"at least 2 folds, got 1; set folds to 2 or more") as exc:
        load_data(DataSpec("digits:digit", (SIZE, SIZE), folds=1, fold=0), cfg)
    assert exc.value.param == "folds"
    with pytest.raises(DataError, match="set val_fraction to e.g. 0.2") as exc:
        stratified_split(np.zeros(4, int), 1.5, 0)
    assert exc.value.render("--val-fraction") == ("validation fraction must be between 0 and 1, got 1.5; "
                                                  "set --val-fraction to e.g. 0.2")


def test_folder_scan_takes_image_files_only_in_string_order(tmp_path, cfg):
    _write_folder(tmp_path, ["a", "b"], n=2)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"editor dropping")
    (tmp_path / "b" / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "b" / "sub" / "deep.JPG", "JPEG")
    data = image_folder(tmp_path, dict(cfg, input_size=(3, SIZE, SIZE)), val_fraction=0.4)
    paths = sorted(data.train.paths + data.val.paths)
    assert [p.replace(str(tmp_path), "") for p in paths] == ["/a/0.png", "/a/1.png", "/b/0.png", "/b/1.png",
                                                              "/b/sub/deep.JPG"]


def _file(path):
    Image.new("RGB", (8, 8)).save(path)
    return str(path)


def _mkdir(path):
    path.mkdir()
    return str(path)


def _flat(path):
    path.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, i, i)).save(path / f"{i}.png")
    return str(path)


def _classes(path, classes, n=3):
    _write_folder(path, classes, n=n)
    return str(path)


def _stray_val(path):
    _write_folder(path / "train", ["a", "b"], n=2)
    _write_folder(path / "val", ["a", "c"], n=1)
    return str(path)


@pytest.mark.parametrize("make, expected", [
    (lambda root: "digits:nope", "error: unknown digits target 'nope'; use one of digits:digit"),
    (lambda root: str(root / "missing"), "give --data an image folder (one subfolder per class) or one of those names"),
    (lambda root: _mkdir(root / "empty"), "empty has 0 classes (none); a classifier needs at least 2"),
    (lambda root: _classes(root / "one", ["only"]), "one has 1 class (only); a classifier needs at least 2"),
])
def test_tune_on_malformed_data_is_one_error_line_and_writes_nothing(tmp_path, make, expected):
    out = tmp_path / "tasks"
    result = CliRunner().invoke(main, ["tune", "resnet18", "--weights", "random", "--data", make(tmp_path),
                                       "--name", "x", "--blocks", "none", "--input-size", str(SIZE), "--epochs", "1",
                                       "--no-progress", "--task-dir", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
    assert not out.exists() or not any(out.iterdir())
