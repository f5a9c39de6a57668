"""The example scripts, run as users would, with tiny settings."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    digits = load_digits()
    for cls in (0, 1, 2):
        (root / str(cls)).mkdir()
        for i, idx in enumerate(np.flatnonzero(digits.target == cls)[:12]):
            img = (digits.images[idx] * (255 / 16)).astype(np.uint8)
            Image.fromarray(img).convert("RGB").save(root / str(cls) / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def task_files(image_folder, tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("tasks")
    example = _load("subtune_image_folder")
    common = [str(image_folder), "--model", "resnet18", "--weights", "random", "--input-size", "32", "--epochs", "1",
              "--device", "cpu", "--out", str(out)]
    return [example.main([*common, "--name", name, "--units", units])
            for name, units in (("late", "layer4.1"), ("stage", "layer4"), ("probe", "none"))]


def test_subtune_image_folder_writes_a_task(task_files):
    from subtune_edge import load_task

    task = load_task(task_files[0])
    assert task.tuned_units == ["layer4.1"] and task.labels == ["0", "1", "2"]
    assert task.training["mode"] == "subtune"


def test_fuse_and_export_then_benchmark(task_files, tmp_path):
    manifest = _load("fuse_and_export").main([*task_files, "--out", str(tmp_path / "export")])
    assert manifest["verification"]["passed"] is True
    assert [t["output"] for t in manifest["tasks"]] == ["late", "stage", "probe"]
    assert (tmp_path / "export" / "separate" / "probe.onnx").is_file()


def test_benchmark_suite_example(tmp_path):
    suite = tmp_path / "tiny.toml"
    suite.write_text("""
name = "tiny"
description = "resnet18 at 32x32, two tasks"
backbone = "resnet18"
input_size = [32, 32]
batch_sizes = [1]
backends = ["ort-cpu", "trt"]
threads = 1
[budget]
warmup = 1
min_runs = 3
max_runs = 5
seconds = 0.0
[[tasks]]
name = "a"
units = "layer4.1"
[[tasks]]
name = "b"
units = "layer3"
""")
    results = _load("benchmark_suite").main([str(suite), "--results", str(tmp_path / "out")])
    assert [r["k"] for r in results["rows"]] == [1, 2]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["suite"]["name"] == "tiny"
    assert {s["backend"] for s in results["skipped"]} == {"trt"}
