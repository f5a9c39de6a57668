"""OpenVINO as a runtime: the fused, fp16 (and INT8) files against ONNX Runtime, load_export, predict, bench,
export verification, and the skip line when OpenVINO is not installed."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from subtune_edge.cli import main
from subtune_edge.errors import ExportError
from subtune_edge.exporters import FP16, FP32, Tolerance, compare_outputs, export_tasks
from subtune_edge.exporters.export import OPTION_NAMES
from subtune_edge.runtime import OrtRunner, load_export, make_runner, read_manifest
from subtune_edge.task import save_task
from tests.helpers import SIZE, backbone_for, three_depth_tasks

pytestmark = pytest.mark.slow

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install 'subtune-edge[openvino]'")

TOLERANCES = {"model.onnx": FP32, "model.fp16.onnx": FP16}
#: INT8 where this tree can write it: calibrated on bundled photos, a gate loose enough for random weights
INT8 = {"int8": True, "calibration": ("skimage-textures",), "calibration_samples": 16, "int8_min_agreement": 0.5,
        "int8_max_drop": 1.0} if "int8" in OPTION_NAMES else {}


@pytest.fixture(scope="module")
def ov_export(tmp_path_factory):
    tasks = three_depth_tasks(backbone_for("resnet18"))
    out = tmp_path_factory.mktemp("ov") / "export"
    export_tasks(tasks, out, batch=(1, 8), fp16=True, separate=True, verify_with=("openvino",), ort_format=True,
                 **INT8)
    return out


def _tolerance(manifest, file: str) -> Tolerance | None:
    """The tolerance the export verified ``file`` with (an INT8 file's is the INT8 gate's, recorded by name)."""
    if file in TOLERANCES:
        return TOLERANCES[file]
    ver = manifest.info["verification"]
    names = {r["tolerance"] for r in ver["results"] if r["file"] == file}
    known = ver.get("tolerances") or {}
    if len(names) != 1 or next(iter(names)) not in known:
        return None
    t = known[next(iter(names))]
    return Tolerance(t["name"], t["rel"], t["tie"])


@pytest.mark.parametrize("file", ["model.onnx", "model.fp16.onnx", "model.int8.onnx"])
@pytest.mark.parametrize("batch", [1, 8])
def test_openvino_outputs_agree_with_onnxruntime_within_the_files_precision(ov_export, file, batch):
    manifest = read_manifest(ov_export, verify_files=False)
    if file not in manifest.files:
        pytest.skip(f"{file} is not in this export (INT8 export not available in this tree)")
    tol = _tolerance(manifest, file)
    assert tol is not None, f"no recorded tolerance for {file}"
    x = np.random.default_rng(batch).standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32)
    with OrtRunner(ov_export / file) as ort_runner, make_runner("openvino", ov_export / file, threads=2) as ov_runner:
        assert ov_runner.input_names == ["input"]
        assert ov_runner.output_names == manifest.outputs  # the ONNX names, also for the fp16 graph's casts
        reference, actual = ort_runner.infer({"input": x}), ov_runner.infer({"input": x})
    for name in manifest.outputs:
        assert actual[name].shape == (batch, manifest.task(name).num_classes)
    results = compare_outputs(reference, actual, tol)
    assert all(r.passed for r in results), [r.reason for r in results if not r.passed]


def test_export_verification_on_openvino_is_recorded(ov_export):
    ver = read_manifest(ov_export).info["verification"]
    ov_results = [r for r in ver["results"] if r.get("runtime") == "openvino"]
    files = ["model.onnx", "model.fp16.onnx"] + (["model.int8.onnx"] if INT8 else [])
    assert {r["file"] for r in ov_results} == set(files)
    assert len(ov_results) == 3 * len(files) and all(r["passed"] for r in ov_results)
    assert {r["tolerance"] for r in ov_results if r["file"] == "model.fp16.onnx"} == {"fp16"}
    settings = ver["runtimes"]["openvino"]
    assert settings["config"]["PERFORMANCE_HINT"] == "LATENCY"
    assert settings["reported"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert settings["files"] == files
    if INT8:  # INT8 has no PyTorch tolerance (its gate is against fp32): OpenVINO and .ort against ORT's INT8 run
        for file in ("model.int8.onnx", "model.int8.ort"):
            mine = [r for r in ver["results"] if r["file"] == file and r.get("reference")]
            assert len(mine) == 3 and all(r["passed"] and r["tolerance"] == "int8-runtime" for r in mine), mine


def test_load_export_and_predict_on_openvino_match_onnxruntime(ov_export, tmp_path):
    x = np.random.default_rng(3).standard_normal((11, 3, SIZE, SIZE)).astype(np.float32)  # split at batch max 8
    reference = load_export(ov_export, device="cpu")(x)
    with load_export(ov_export, runtime="openvino", threads=2) as model:
        assert model.runner.name == "openvino" and model.file == "model.onnx"
        got = model(x)
    for name, ref in reference.items():
        assert np.abs(got[name] - ref).max() <= FP32.rel * np.abs(ref).max()
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 90, 3), dtype=np.uint8)).save(img)
    outputs = {}
    for runtime in ("onnxruntime", "openvino"):
        result = CliRunner().invoke(main, ["predict", str(ov_export), str(img), "--runtime", runtime, "--json",
                                           "--topk", "2"])
        assert result.exit_code == 0, result.output
        outputs[runtime] = json.loads(result.output)
    for task, top in outputs["onnxruntime"][0]["tasks"].items():
        other = outputs["openvino"][0]["tasks"][task]
        assert [t["label"] for t in top][:1] == [t["label"] for t in other][:1]
        assert abs(top[0]["score"] - other[0]["score"]) < 1e-4


def test_load_export_on_openvino_runs_a_subset_of_tasks(ov_export):
    x = np.random.default_rng(4).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    with load_export(ov_export, runtime="openvino", tasks=["early", "late"]) as model:
        assert model.task_names == ["late", "early"]  # output order
        got = model(x)
    assert set(got) == {"late", "early"}
    ref = load_export(ov_export, device="cpu")(x)
    assert np.abs(got["early"] - ref["early"]).max() <= FP32.rel * np.abs(ref["early"]).max()


def test_load_export_refuses_openvino_on_another_device(ov_export):
    with pytest.raises(ExportError, match="openvino runs on cpu; pass device cpu"):
        load_export(ov_export, runtime="openvino", device="cuda")
    with pytest.raises(ExportError, match="unknown runtime 'tflite'"):
        load_export(ov_export, runtime="tflite")


def test_bench_on_openvino_writes_rows_with_its_settings(ov_export, tmp_path):
    results = tmp_path / "bench"
    result = CliRunner().invoke(main, ["bench", str(ov_export), "--backend", "openvino,ort-cpu", "--batch", "1",
                                       "--seconds", "0", "--max-tasks", "2", "--threads", "1",
                                       "--results", str(results)])
    assert result.exit_code == 0, result.output
    data = json.loads((results / "results.json").read_text())
    rows = [r for r in data["rows"] if r["backend"] == "openvino"]
    assert [r["k"] for r in rows] == [1, 2] and not data["skipped"]
    for r in rows:
        assert r["fused"]["median_ms"] > 0 and r["separate"]["median_ms"] > 0 and r["ratio"] > 0
        assert r["fused_graph"] == ("pruned" if r["k"] < 3 else "full")
        settings = r["runtime_settings"]
        assert settings["config"] == {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": "1",
                                      "INFERENCE_PRECISION_HINT": "f32"}
        assert settings["reported"]["NUM_STREAMS"] == "1"
    assert "runtime settings: PERFORMANCE_HINT LATENCY" in (results / "report.md").read_text()


def test_verify_with_refuses_unknown_runtimes_and_no_verification(tmp_path):
    tasks = three_depth_tasks(backbone_for("resnet18"))[:1]
    with pytest.raises(ExportError, match="cannot verify on 'tflite'"):
        export_tasks(tasks, tmp_path / "a", verify_with=("tflite",))
    with pytest.raises(ExportError, match="verification is off"):
        export_tasks(tasks, tmp_path / "b", verify_with=("openvino",), verify=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


HIDDEN = """
import sys
sys.modules["openvino"] = None  # as if OpenVINO were not installed
import json
from subtune_edge.errors import RuntimeMissingError
from subtune_edge.runtime import load_export, missing_reason
out = {"reason": missing_reason("openvino")}
try:
    load_export(sys.argv[1], runtime="openvino")
except RuntimeMissingError as exc:
    out["load_export"] = str(exc)
from subtune_edge.bench.harness import BenchConfig, Harness
out["skipped"] = Harness(sys.argv[1], BenchConfig(backends=["openvino", "ort-cpu"])).skipped()
print(json.dumps(out))
"""

HIDDEN_CLI = """
import sys
sys.modules["openvino"] = None
from subtune_edge.cli import main
main(sys.argv[1:])
"""


def test_missing_openvino_is_skipped_with_its_install_line(ov_export, tmp_path):
    install = "pip install 'subtune-edge[openvino]'"
    done = subprocess.run([sys.executable, "-c", HIDDEN, str(ov_export)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["reason"] == f"openvino needs OpenVINO's Python package: {install}"
    assert out["load_export"] == out["reason"]
    assert out["skipped"] == [{"backend": "openvino", "reason": out["reason"]}]
    done = subprocess.run([sys.executable, "-c", HIDDEN_CLI, "bench", str(ov_export), "--backend", "openvino",
                           "--results", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"error: no backend could run here: {out['reason']}"


def test_cli_export_ort_format_and_verify_with_openvino(tmp_path):
    task = three_depth_tasks(backbone_for("resnet18"))[0]
    save_task(task, tmp_path / "tasks" / task.name)
    out = tmp_path / "out"
    args = ["export", "--tasks", task.name, "--task-dir", str(tmp_path / "tasks"), "--out", str(out), "--json"]
    bad = CliRunner().invoke(main, [*args, "--verify-with", "tflite"])
    assert bad.exit_code == 2 and "error: cannot verify on 'tflite'; --verify-with takes ort-cuda, ort-trt, openvino" \
        in bad.output
    result = CliRunner().invoke(main, [*args, "--ort-format", "--verify-with", "openvino"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output)
    assert {"model.ort", "required_operators.config"} <= set(manifest["files"])
    assert {(r["file"], r.get("runtime")) for r in manifest["verification"]["results"]} == {
        ("model.onnx", None), ("model.onnx", "openvino"), ("model.ort", None)}
    inspect = CliRunner().invoke(main, ["inspect", str(out), "--json"])
    assert inspect.exit_code == 0 and set(json.loads(inspect.output)["files_check"].values()) == {"ok"}
