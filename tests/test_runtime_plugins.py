"""A runtime registered in one module (tests/toy_runtime.py) works everywhere a runtime is named.

Export verification (``verify_with``), ``load_export(runtime=...)``, ``predict --runtime`` and
``bench --backend`` read the registry; none of them is changed for the toy runtime.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from subtune_edge.cli import main
from subtune_edge.exporters import export_tasks
from subtune_edge.runtime import load_export, missing_reason, runtime_names, unregister_runtime
from subtune_edge.synthetic import synthetic_task

from .helpers import backbone_for

SIZE = 32


@pytest.fixture(scope="module")
def toy():
    from . import toy_runtime

    yield toy_runtime.SPEC
    unregister_runtime("toy")


@pytest.fixture(scope="module")
def toy_export(toy, tmp_path_factory):
    backbone = backbone_for("mobilenetv3_small_050")
    tasks = [synthetic_task(backbone, name, [backbone.unit_names[-1]], 3, seed=i, input_size=(SIZE, SIZE))
             for i, name in enumerate(("a", "b"))]
    out = tmp_path_factory.mktemp("toy") / "export"
    manifest = export_tasks(tasks, out, weights="random", batch=(1, 2), input_size=(SIZE, SIZE), separate=True,
                            verify_with=("toy",), branches="plain")
    return out, manifest


def test_the_toy_runtime_is_registered_and_runnable(toy):
    assert "toy" in runtime_names() and missing_reason("toy") is None


def test_export_verifies_on_the_toy_runtime(toy_export):
    _, manifest = toy_export
    ver = manifest.info["verification"]
    mine = [r for r in ver["results"] if r.get("runtime") == "toy"]
    assert {r["file"] for r in mine} == {"model.onnx"} and len(mine) == 2 and all(r["passed"] for r in mine)
    assert ver["runtimes"]["toy"]["files"] == ["model.onnx"]


def test_load_export_and_predict_run_on_the_toy_runtime(toy_export, tmp_path):
    out, _ = toy_export
    x = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    with load_export(out, runtime="toy") as model:
        assert model.runner.name == "toy"
        got = model.run(x)
    ref = load_export(out, device="cpu").run(x)
    for name in ("a", "b"):
        assert np.abs(got[name] - ref[name]).max() <= 1e-4 * np.abs(ref[name]).max()
    image = tmp_path / "img.png"
    from PIL import Image

    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    result = CliRunner().invoke(main, ["predict", str(out), str(image), "--runtime", "toy", "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.output)[0]["tasks"]) == {"a", "b"}


def test_bench_measures_the_toy_runtime(toy_export, tmp_path):
    out, _ = toy_export
    result = CliRunner().invoke(main, ["bench", str(out), "--backend", "toy", "--batch", "1", "--seconds", "0",
                                       "--results", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "r" / "results.json").read_text())["rows"]
    assert [(r["backend"], r["k"]) for r in rows] == [("toy", 1), ("toy", 2)]
    assert all(r["fused"]["median_ms"] > 0 and r["separate"]["median_ms"] > 0 for r in rows)
