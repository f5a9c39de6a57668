"""INT8 exports: QDQ graph, symmetric int8, per-task gate against fp32 on held-out digits, fp32 fallback.

The tasks are real: the offline ImageNet EfficientNet-Lite0 at 32x32, each task SubTuned for a few
epochs on the bundled digits (random-init BatchNorm would make INT8 ranges, and so the gate, meaningless).
"""

import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from subtune_edge.backbone import create_backbone, model_args_for_input
from subtune_edge.cli import main
from subtune_edge.data import DataSpec, load_data
from subtune_edge.errors import ExportError
from subtune_edge.exporters import build_recipe, export_tasks
from subtune_edge.exporters.int8 import branch_nodes, shape_nodes
from subtune_edge.runtime import load_export, read_manifest
from subtune_edge.task import save_task
from subtune_edge.train import TrainConfig, train

from .cpp import run_cpp, run_ok

pytestmark = pytest.mark.slow

SIZE = 32
TASKS = {"digit": ("digits:digit", ["conv_head"]), "parity": ("digits:parity", ["blocks.6.0", "conv_head"]),
         "ge5": ("digits:ge5", ["conv_head"])}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("int8")
    backbone = create_backbone("tf_efficientnet_lite0", "offline",
                               **model_args_for_input("tf_efficientnet_lite0", (SIZE, SIZE)))
    tasks = []
    for name, (source, units) in TASKS.items():
        data = load_data(DataSpec(source, input_size=(SIZE, SIZE)), backbone.data_config)
        result = train(backbone, data, units, TrainConfig(epochs=4, batch_size=64, device="cpu", seed=0), name=name)
        save_task(result.task, root / "tasks" / name)
        tasks.append(result.task)
    return root, tasks


@pytest.fixture(scope="module")
def exported(trained):
    root, tasks = trained
    manifest = export_tasks(tasks, root / "out", batch=(1, 8), int8=True, int8_target="trt", separate=True).to_json()
    return root / "out", manifest


def _held_out(source: str, n: int = 120) -> tuple[np.ndarray, np.ndarray, list]:
    data = load_data(DataSpec(source, input_size=(SIZE, SIZE)), {"input_size": (3, SIZE, SIZE), "mean": (0.5,) * 3,
                                                                  "std": (0.5,) * 3, "interpolation": "bicubic",
                                                                  "crop_pct": 1.0, "crop_mode": "center"})
    return data, np.asarray(data.val.targets)[:n], [data.val.image(i) for i in range(n)]


def test_int8_file_is_symmetric_qdq_and_every_task_passes_the_gate(exported):
    out, manifest = exported
    model = onnx.load(str(out / "model.int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                   and len(n.input) > 2 and n.input[2] in inits]
    assert zero_points and all(not zp.any() for zp in zero_points), "symmetric: every zero point is 0"
    assert {zp.dtype for zp in zero_points} <= {np.dtype(np.int8), np.dtype(np.int32)}
    per_channel = [inits[n.input[1]] for n in model.graph.node if n.op_type == "DequantizeLinear"
                   and n.input[0] in inits and inits[n.input[0]].dtype == np.int8]
    assert per_channel and sum(s.ndim == 1 and s.size > 1 for s in per_channel) > 20, "per-channel weight scales"
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]
    assert [o.name for o in model.graph.output] == ["digit", "parity", "ge5"]
    sizes = manifest["files"]
    assert sizes["model.int8.onnx"]["bytes"] < 0.35 * sizes["model.onnx"]["bytes"]
    summary = manifest["int8"]
    assert summary["passed"] and summary["fp32_branches"] == [] and summary["calibration_samples"] == 256
    for t in manifest["tasks"]:
        g = t["int8"]
        assert g["precision"] == "int8" and g["passed"] and g["agreement"] >= 0.98
        assert g["accuracy_fp32"] - g["accuracy_int8"] <= 0.01 and g["accuracy_fp32"] > 0.8
        assert g["calibration"] == [TASKS[t["name"]][0]] and g["held_out"].endswith("(validation split)")
    typed = read_manifest(out)  # the typed reader checks the new fields and the int8 graph's outputs
    assert typed.task("parity").int8.precision == "int8" and typed.task("parity").int8.samples == 256


def test_every_int8_output_agrees_with_fp32_on_held_out_digits(exported):
    out, _ = exported
    with load_export(out, device="cpu", precision="fp32", threads=2) as fp32, \
            load_export(out, device="cpu", precision="int8", threads=2) as int8:
        assert int8.file == "model.int8.onnx"
        for name, (source, _) in TASKS.items():
            _, targets, images = _held_out(source)
            a, b = fp32(images)[name], int8(images)[name]
            agreement = float((a.argmax(1) == b.argmax(1)).mean())
            assert agreement >= 0.97, f"{name}: {agreement}"
            drop = float((a.argmax(1) == targets).mean() - (b.argmax(1) == targets).mean())
            assert drop <= 0.025, f"{name}: accuracy drop {drop}"
            assert 0 < np.abs(a - b).max() < 0.5 * np.abs(a).max(), "int8 really runs, and stays close"


def _activation_outlier(task, channel: int = 0, k: float = 1000.0):
    """The same function in fp32, hostile to per-tensor INT8: one channel of blocks.6.0's output scaled by k,
    conv_head's weights on that channel divided by k (an activation outlier, as LLMs and ViTs grow)."""
    t = {n: v.clone() for n, v in task.tensors.items()}
    t["blocks.6.0.bn3.weight"][channel] *= k
    t["blocks.6.0.bn3.bias"][channel] *= k
    t["conv_head.0.weight"][:, channel] /= k
    return dataclasses.replace(task, tensors=t)


def test_gate_fails_a_deliberately_broken_branch_and_fallback_keeps_it_fp32(trained, tmp_path):
    _, (digit, parity, ge5) = trained
    tasks = [digit, _activation_outlier(parity), ge5]
    with pytest.raises(ExportError) as err:
        export_tasks(tasks, tmp_path / "bad", batch=(1, 8), int8=True)  # fp32 verification passes: same function
    message = str(err.value)
    assert "task 'parity'" in message and "agreement" in message and "\n" not in message
    assert err.value.param == "int8_fallback" and not (tmp_path / "bad").exists()
    # TASK=DATA names each task's calibration data (here the recorded specs again)
    manifest = export_tasks(tasks, tmp_path / "rescued", batch=(1, 8), int8=True, int8_fallback=True, verify=False,
                            calibration=tuple(f"{name}={src}" for name, (src, _) in TASKS.items())).to_json()
    by_name = {t["name"]: t["int8"] for t in manifest["tasks"]}
    assert by_name["parity"]["precision"] == "fp32" and by_name["parity"]["agreement"] >= 0.98
    assert by_name["digit"]["precision"] == by_name["ge5"]["precision"] == "int8"
    assert by_name["ge5"]["calibration"] == ["digits:ge5"] and by_name["ge5"]["calibration_samples"] == 85
    assert by_name["ge5"]["held_out"] == "digits:ge5 (validation split)"  # never the calibration images
    assert manifest["int8"]["fp32_branches"] == ["parity"] and manifest["onnx"]["model.int8.onnx"]["attempts"] == 2
    model = onnx.load(str(tmp_path / "rescued" / "model.int8.onnx"))
    branches = branch_nodes(model, ["digit", "parity", "ge5"])
    kinds = {name: {n.op_type for n in model.graph.node if n.name in set(nodes)} for name, nodes in branches.items()}
    assert "Conv" in kinds["parity"] and not kinds["parity"] & {"QuantizeLinear", "DequantizeLinear"}
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds["ge5"]


def test_shape_arithmetic_is_never_quantized(exported):
    out, _ = exported
    model = onnx.load(str(out / "model.int8.onnx"))
    off = set(shape_nodes(model))
    assert any(n.op_type == "Ceil" for n in model.graph.node if n.name in off)  # TF "same" padding amounts
    produced = {t: n for n in model.graph.node for t in n.output}
    for node in model.graph.node:
        if node.op_type == "Pad":
            pads = produced.get(node.input[1])
            assert pads is None or pads.op_type != "DequantizeLinear"


def test_cli_predict_precision_int8_and_inspect_show_the_gate(exported, tmp_path):
    out, _ = exported
    _, _, images = _held_out("digits:digit", 2)
    path = tmp_path / "d.png"
    images[0].save(path)
    result = CliRunner().invoke(main, ["predict", str(out), str(path), "--precision", "int8", "--json",
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    with load_export(out, device="cpu", precision="int8") as model:
        expected = model.predict([path], topk=3)[0]
    assert [p["label"] for p in row["tasks"]["digit"]] == [lab for lab, _ in expected["digit"]]
    shown = CliRunner().invoke(main, ["inspect", str(out), "--json"])
    assert shown.exit_code == 0, shown.output
    tasks = json.loads(shown.output)["manifest"]["tasks"]
    assert [t["int8"]["precision"] for t in tasks] == ["int8"] * 3
    assert json.loads(shown.output)["files_check"]["model.int8.onnx"] == "ok"


def test_bench_measures_fused_and_separate_per_precision(exported, tmp_path):
    out, manifest = exported
    assert [t["separate_int8"] for t in manifest["tasks"]] == [f"separate/{n}.int8.onnx" for n in TASKS]
    assert all(manifest["int8"]["separate"][n]["agreement"] >= 0.98 for n in TASKS)
    assert manifest["sizes"]["separate_bytes"] == sum(manifest["files"][f"separate/{n}.onnx"]["bytes"] for n in TASKS)
    result = CliRunner().invoke(main, ["bench", str(out), "--precision", "fp32,int8", "--batch", "2", "--threads", "2",
                                       "--seconds", "0.2", "--results", str(tmp_path / "bench")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "bench" / "results.json").read_text())["rows"]
    assert sorted((r["precision"], r["k"]) for r in rows) == [(p, k) for p in ("fp32", "int8") for k in (1, 2, 3)]
    for r in rows:
        assert r["fused"]["median_ms"] > 0 and r["separate"]["median_ms"] > 0
        if r["precision"] == "int8":
            fp32 = next(x for x in rows if x["precision"] == "fp32" and x["k"] == r["k"])
            assert r["fused_vs_fp32_fused"] == pytest.approx(r["fused"]["median_ms"] / fp32["fused"]["median_ms"])
            assert r["memory"]["separate_weight_bytes"] < fp32["memory"]["separate_weight_bytes"] / 2.5


def test_bad_int8_options_are_refused_in_one_line(trained, tmp_path):
    _, tasks = trained
    with pytest.raises(ExportError, match="calibration method 'kl'") as err:
        export_tasks(tasks, tmp_path / "a", int8=True, calibration_method="kl")
    assert err.value.param == "calibration_method"
    with pytest.raises(ExportError, match="needs 5000") as err:
        export_tasks(tasks, tmp_path / "b", batch=(1, 8), int8=True, calibration_samples=15000, verify=False)
    assert err.value.param == "calibration_samples" and not (tmp_path / "b").exists()
    with pytest.raises(ExportError, match="neither a folder nor a data spec") as err:
        export_tasks(tasks, tmp_path / "c", batch=(1, 8), int8=True, calibration=("no/such/dir",), verify=False)
    assert err.value.param == "calibration"
    export_tasks(tasks[:1], tmp_path / "plain", batch=(1, 2), verify=False)
    with pytest.raises(ExportError, match="has no model.int8.onnx; re-export with the 'int8' option"):
        load_export(tmp_path / "plain", precision="int8")


@pytest.mark.parametrize("version,flags,typed", [("10.3.0", ("INT8",), False), ("11.0.1", (), True)])
def test_tensorrt_int8_recipe_builds_from_the_qdq_file(version, flags, typed):
    recipe = build_recipe(version, fp16=False, int8=True)
    assert recipe.onnx_file == "model.int8.onnx" and recipe.precision == "int8"
    assert recipe.builder_flags == flags and recipe.strongly_typed is typed
    assert build_recipe("10.3.0", fp16=True, int8=True).builder_flags == ("INT8", "FP16")
    assert build_recipe(version, fp16=False).onnx_file == "model.onnx"


@pytest.mark.slow
def test_cpp_runner_runs_the_int8_file_and_matches_python(binaries, exported, tmp_path):
    out, manifest = exported
    batch = np.random.default_rng(1).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32) * 0.5
    np.save(tmp_path / "x.npy", batch)
    proc = run_ok(binaries["release"], out, tmp_path / "x.npy", "--precision", "int8", "--json", "--threads", "2",
                  "--dump-outputs", tmp_path / "logits")
    assert json.loads(proc.stdout)["precision"] == "int8"
    with load_export(out, device="cpu", precision="int8", threads=2) as model:
        expected = model.run(batch)
    for t in manifest["tasks"]:
        got = np.load(tmp_path / "logits" / f"{t['output']}.npy")
        scale = np.abs(expected[t["name"]]).max()
        assert np.abs(got - expected[t["name"]]).max() <= 1e-4 * scale, t["name"]
    plain = run_cpp(binaries["release"], out, tmp_path / "x.npy", "--precision", "int8", "--backend", "tensorrt")
    assert plain.returncode != 0


def test_uint8_activations_for_onnx_runtime_on_x86(trained, tmp_path):
    _, tasks = trained
    with pytest.raises(ExportError) as err:
        export_tasks(tasks, tmp_path / "x", int8=True, int8_activations="u4")
    assert err.value.param == "int8_activations"
    manifest = export_tasks(tasks[:1], tmp_path / "u8", batch=(1, 8), int8=True, int8_activations="uint8",
                            verify=False, calibration_samples=64).to_json()
    assert manifest["int8"]["activations"] == "uint8" and manifest["tasks"][0]["int8"]["passed"]
    model = onnx.load(str(tmp_path / "u8" / "model.int8.onnx"))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    kinds = {inits[n.input[2]].dtype for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2}
    assert kinds == {np.dtype(np.uint8)}
