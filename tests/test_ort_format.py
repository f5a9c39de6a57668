"""ONNX Runtime's mobile format: ``export --ort-format`` writes model.ort (+ fp16 / int8 twins) and the
required_operators.config, listed, hashed and verified; load_export and predict run them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from subtune_edge.cli import main
from subtune_edge.errors import ExportError
from subtune_edge.exporters import FP16, FP32, compare_outputs, export_tasks
from subtune_edge.exporters.ort_format import parse_config
from subtune_edge.io import sha256_file
from subtune_edge.runtime import OrtRunner, load_export, read_manifest
from subtune_edge.runtime.ort_layout import OrtFormat
from tests.helpers import SIZE, backbone_for, three_depth_tasks

from .cpp import run_cpp, run_ok


@pytest.fixture(scope="module")
def ort_export(tmp_path_factory):
    tasks = three_depth_tasks(backbone_for("tf_efficientnet_lite0"))
    out = tmp_path_factory.mktemp("ortfmt") / "export"
    export_tasks(tasks, out, batch=(1, 8), fp16=True, ort_format=True)
    return out


def test_ort_files_are_listed_hashed_and_recorded(ort_export):
    manifest = read_manifest(ort_export)  # every file re-hashed, the ort_format record checked against 'files'
    record = manifest.ort_format
    expected = {"model.onnx": "model.ort", "model.fp16.onnx": "model.fp16.ort"}
    if "model.int8.onnx" in manifest.files:
        expected["model.int8.onnx"] = "model.int8.ort"
    assert record.files == expected and record.config == "required_operators.config"
    for rel in [*expected.values(), record.config]:
        assert manifest.files[rel].sha256 == sha256_file(ort_export / rel)
    text = (ort_export / record.config).read_text()
    assert str(ort_export.parent) not in text  # no build-folder paths in the config
    ops = parse_config(text)
    assert ops == record.info["operators"]
    assert "Conv" in {op for opsets in ops["ai.onnx"].values() for op in opsets}
    assert record.info["optimization_style"] == "Fixed" and record.info["target_platform"] is None


@pytest.mark.parametrize(("ort_file", "onnx_file", "tol"), [("model.ort", "model.onnx", FP32),
                                                             ("model.fp16.ort", "model.fp16.onnx", FP16)])
def test_ort_file_loads_in_onnxruntime_and_matches_its_onnx_source(ort_export, ort_file, onnx_file, tol):
    for batch in (1, 8):
        x = np.random.default_rng(batch).standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32)
        with OrtRunner(ort_export / onnx_file) as a, OrtRunner(ort_export / ort_file) as b:
            assert b.output_names == a.output_names
            reference, actual = a.infer({"input": x}), b.infer({"input": x})
        results = compare_outputs(reference, actual, tol)
        assert all(r.passed for r in results), [r.reason for r in results if not r.passed]
        if tol is FP32:
            assert max(r.max_rel for r in results) < 1e-5


def test_export_verified_every_ort_file_against_pytorch(ort_export):
    results = read_manifest(ort_export).info["verification"]["results"]
    for ort_file, tol in (("model.ort", "fp32"), ("model.fp16.ort", "fp16")):
        mine = [r for r in results if r["file"] == ort_file]
        assert len(mine) == 3 and all(r["passed"] and r["tolerance"] == tol for r in mine)


def test_load_export_and_predict_run_the_ort_files(ort_export, tmp_path):
    x = np.random.default_rng(5).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    for precision in ("fp32", "fp16"):
        reference = load_export(ort_export, device="cpu", precision=precision)(x)
        with load_export(ort_export, device="cpu", precision=precision, format="ort") as model:
            assert model.file == ("model.ort" if precision == "fp32" else "model.fp16.ort")
            got = model(x)
        for name, ref in reference.items():
            assert np.abs(got[name] - ref).max() <= 1e-4 * np.abs(ref).max()
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (70, 64, 3), dtype=np.uint8)).save(img)
    runs = [CliRunner().invoke(main, ["predict", str(ort_export), str(img), "--json", *extra])
            for extra in ([], ["--ort-format"])]
    assert all(r.exit_code == 0 for r in runs), [r.output for r in runs]
    onnx_top, ort_top = (json.loads(r.output)[0]["tasks"] for r in runs)
    for task, top in onnx_top.items():
        assert top[0]["label"] == ort_top[task][0]["label"]
        assert abs(top[0]["score"] - ort_top[task][0]["score"]) < 1e-4


def test_a_changed_ort_file_is_refused(ort_export, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(ort_export, copy)
    data = bytearray((copy / "model.ort").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.ort").write_bytes(bytes(data))
    with pytest.raises(ExportError, match="model.ort is changed since export"):
        load_export(copy, format="ort")
    load_export(copy).close()  # model.onnx is untouched and still loads


def test_ort_format_refusals(tmp_path, ort_export):
    tasks = three_depth_tasks(backbone_for("resnet18"))[:1]
    plain = tmp_path / "plain"
    export_tasks(tasks, plain, verify=False)
    with pytest.raises(ExportError, match="has no model.ort; re-export with the 'ort_format' option"):
        load_export(plain, format="ort")
    with pytest.raises(ExportError, match="openvino does not load .ort files; load them with runtime ort-cpu"):
        load_export(ort_export, format="ort", runtime="openvino")
    with pytest.raises(ExportError, match="unknown format 'tflite'"):
        load_export(ort_export, format="tflite")
    files = {"model.onnx": {}, "model.ort": {}}
    with pytest.raises(ExportError, match="names required_operators.config, which 'files' does not list"):
        OrtFormat.from_json({"files": {"model.onnx": "model.ort"}, "config": "required_operators.config"},
                            files=files)
    with pytest.raises(ExportError, match="its .ort twin"):
        OrtFormat.from_json({"files": {"model.onnx": "../x.ort"}, "config": "c"}, files=files)


# -- the C++ runner on the .ort files (built like tests/test_cpp.py builds it) ---------------------------------
@pytest.mark.slow
def test_cpp_runner_runs_the_ort_files(binaries, ort_export, tmp_path):
    x = np.random.default_rng(7).standard_normal((4, 3, SIZE, SIZE)).astype(np.float32)
    batch = tmp_path / "batch.npy"
    np.save(batch, x)
    for precision, model_args in (("fp32", []), ("fp16", ["--model", "model.fp16.onnx"])):
        out = tmp_path / precision
        run_ok(binaries["release"], ort_export, batch, "--ort-format", *model_args, "--json", "--dump-outputs", out)
        with load_export(ort_export, device="cpu", precision=precision, format="ort", threads=2) as model:
            ref = model.run(x)
        for task, logits in ref.items():
            assert float(np.abs(np.load(out / f"{task}.npy") - logits).max()) <= 1e-4 * max(1.0, np.abs(logits).max())
    plain = tmp_path / "plain"
    export_tasks(three_depth_tasks(backbone_for("resnet18"))[:1], plain, verify=False)
    proc = run_cpp(binaries["release"], plain, batch, "--ort-format")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {plain} has no model.ort: re-export with "
                                                           "--ort-format")
