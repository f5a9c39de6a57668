"""INT8 exports: QDQ graphs in the form their target runs fastest, the per-task gate on held-out digits,
automatic mixed precision.

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
from subtune_edge.exporters.int8 import paired_drop, shape_nodes
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
    manifest = export_tasks(tasks, root / "out", batch=(1, 8), int8=True, separate=True).to_json()  # target auto
    return root / "out", manifest


def _held_out(source: str, n: int = 120) -> tuple[np.ndarray, np.ndarray, list]:
    data = load_data(DataSpec(source, input_size=(SIZE, SIZE)), {"input_size": (3, SIZE, SIZE), "mean": (0.5,) * 3,
                                                                  "std": (0.5,) * 3, "interpolation": "bicubic",
                                                                  "crop_pct": 1.0, "crop_mode": "center"})
    return data, np.asarray(data.val.targets)[:n], [data.val.image(i) for i in range(n)]


def _qdq(model: onnx.ModelProto) -> tuple[dict, list]:
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    quant = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits]
    return inits, quant


def test_the_default_int8_file_is_the_fast_form_for_this_cpu_and_every_task_passes(exported):
    out, manifest = exported
    model = onnx.load(str(out / "model.int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    inits, quant = _qdq(model)
    # x86 ONNX Runtime's fast kernels are U8S8: activations asymmetric uint8, weights int8 symmetric per channel
    assert {inits[n.input[2]].dtype for n in quant} == {np.dtype(np.uint8)}
    assert any(inits[n.input[2]] != 0 for n in quant), "asymmetric: zero points move"
    per_channel = [inits[n.input[1]] for n in model.graph.node if n.op_type == "DequantizeLinear"
                   and n.input[0] in inits and inits[n.input[0]].dtype == np.int8]
    assert per_channel and sum(s.ndim == 1 and s.size > 1 for s in per_channel) > 20, "per-channel weight scales"
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]
    assert [o.name for o in model.graph.output] == ["digit", "parity", "ge5"]
    sizes = manifest["files"]
    assert sizes["model.int8.onnx"]["bytes"] < 0.35 * sizes["model.onnx"]["bytes"]
    summary = manifest["int8"]
    assert summary["target"] == "ort-x86" and summary["activations"] == "uint8"
    assert "uint8 asymmetric activations" in summary["quantizer"] and summary["fp32_nodes"] == []
    assert summary["passed"] and summary["fp32_branches"] == [] and summary["calibration_samples"] == 256
    for t in manifest["tasks"]:
        g = t["int8"]
        assert g["precision"] == "int8" and g["passed"] and g["test"].startswith("paired accuracy drop")
        assert g["drop_lower"] <= 0.01 and g["accuracy_fp32"] > 0.8 and g["drop"] == pytest.approx(
            g["accuracy_fp32"] - g["accuracy_int8"], abs=1e-5)
        assert g["calibration"] == [TASKS[t["name"]][0]] and g["held_out"].endswith("(validation split)")
    typed = read_manifest(out)  # the typed reader checks the new fields and the int8 graph's outputs
    assert typed.task("parity").int8.precision == "int8" and typed.task("parity").int8.samples == 256


def test_two_targets_are_written_from_one_calibration(trained, tmp_path):
    _, tasks = trained
    manifest = export_tasks(tasks, tmp_path / "two", batch=(1, 8), int8=True, int8_target="ort-x86,trt", verify=False,
                            calibration_samples=96).to_json()
    targets = manifest["int8"]["targets"]
    assert {t: v["file"] for t, v in targets.items()} == {"ort-x86": "model.int8.onnx", "trt": "model.int8.trt.onnx"}
    assert {"model.int8.onnx", "model.int8.trt.onnx"} <= set(manifest["files"])
    x86 = onnx.load(str(tmp_path / "two" / "model.int8.onnx"))
    trt = onnx.load(str(tmp_path / "two" / "model.int8.trt.onnx"))
    (ui, uq), (si, sq) = _qdq(x86), _qdq(trt)
    assert {si[n.input[2]].dtype for n in sq} == {np.dtype(np.int8)} and not any(si[n.input[2]].any() for n in sq)
    # one calibration: the symmetric scale of every activation is its asymmetric range's larger end / 127
    sym = {n.input[0]: float(si[n.input[1]]) for n in sq}
    checked = 0
    for n in uq:
        if n.input[0] in sym:
            scale, zp = float(ui[n.input[1]]), int(ui[n.input[2]])
            low, high = -zp * scale, (255 - zp) * scale
            assert max(abs(low), abs(high)) / 127 == pytest.approx(sym[n.input[0]], rel=0.02, abs=1e-6), n.input[0]
            checked += 1
    assert checked > 20
    for t in manifest["tasks"]:
        assert targets["trt"]["tasks"][t["output"]]["passed"] and t["int8"]["passed"]


def test_every_int8_output_agrees_with_fp32_on_held_out_digits(exported):
    out, _ = exported
    with load_export(out, device="cpu", precision="fp32", threads=2) as fp32, \
            load_export(out, device="cpu", precision="int8", threads=2) as int8:
        assert int8.file == "model.int8.onnx"
        for name, (source, _) in TASKS.items():
            _, targets, images = _held_out(source)
            a, b = fp32(images)[name], int8(images)[name]
            agreement = float((a.argmax(1) == b.argmax(1)).mean())
            assert agreement >= 0.95, f"{name}: {agreement}"
            r32, r8 = a.argmax(1) == targets, b.argmax(1) == targets
            drop, lower, _ = paired_drop(int((r32 & r8).sum()), int((r32 & ~r8).sum()), int((~r32 & r8).sum()),
                                         int((~r32 & ~r8).sum()), 0.95)
            assert drop <= 0.03 and lower <= 0.01, f"{name}: accuracy drop {drop} (at least {lower})"
            assert 0 < np.abs(a - b).max() < 0.5 * np.abs(a).max(), "int8 really runs, and stays close"


def _trunk_outlier(tasks, folder, channel: int = 0, k: float = 1000.0):
    """The same function in fp32, hostile to per-tensor INT8: one channel of the trunk's blocks.5.3 output scaled
    by k, every blocks.6.0's weights on that channel divided by k (an activation outlier, as LLMs and ViTs grow).
    Returns the tasks re-fingerprinted on the changed frozen weights, and that weights file."""
    from safetensors.torch import save_file

    backbone = create_backbone("tf_efficientnet_lite0", "offline")
    state = {n: v.clone() for n, v in backbone.model.state_dict().items()}
    for key in ("blocks.5.3.bn3.weight", "blocks.5.3.bn3.bias"):
        state[key][channel] *= k
    state["blocks.6.0.conv_pw.weight"][:, channel] /= k
    path = folder / "outlier.safetensors"
    save_file(state, str(path))
    fingerprint = create_backbone("tf_efficientnet_lite0", str(path)).fingerprint
    out = []
    for task in tasks:
        t = {n: v.clone() for n, v in task.tensors.items()}
        if "blocks.6.0.conv_pw.weight" in t:  # a task tuning blocks.6.0 reads the outlier through its own copy
            t["blocks.6.0.conv_pw.weight"][:, channel] /= k
        out.append(dataclasses.replace(task, tensors=t, fingerprint=fingerprint))
    return out, path


def test_mixed_precision_rescues_a_trunk_outlier_by_keeping_only_its_layer_fp32(trained, binaries, tmp_path):
    root, tasks = trained
    hostile, weights = _trunk_outlier(tasks, tmp_path)
    with pytest.raises(ExportError) as err:
        export_tasks(hostile, tmp_path / "bad", batch=(1, 8), int8=True, weights=str(weights))
    message = str(err.value)
    assert "INT8 gate failed for task" in message and "confidence" in message and "\n" not in message
    assert err.value.param == "int8_fallback" and not (tmp_path / "bad").exists()
    for task in hostile:
        save_task(task, tmp_path / "tasks" / task.name)
    result = CliRunner().invoke(main, ["export", "--tasks", "digit,parity,ge5", "--task-dir", str(tmp_path / "tasks"),
                                       "--out", str(tmp_path / "rescued"), "--batch", "1:8", "--int8",
                                       "--int8-fallback", "--weights", str(weights), "--json"])
    assert result.exit_code == 0, result.output
    warnings = [ln for ln in result.stderr.splitlines() if "warning" in ln.lower()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: INT8: kept") and "WARNING:" not in result.stderr
    manifest = json.loads(result.stdout)
    kept = manifest["int8"]["fp32_nodes"]
    assert 1 <= len(kept) <= 6, kept  # the outlier's neighbours, not a branch or the trunk
    assert {k["where"] for k in kept} <= {"blocks.5.3", "blocks.6.0", "branch of parity"}, kept
    for t in manifest["tasks"]:
        assert t["int8"]["passed"] and t["int8"]["precision"] == "mixed" and t["int8"]["fp32_units"], t["int8"]
    assert manifest["int8"]["fp32_branches"] == []
    shown = CliRunner().invoke(main, ["inspect", str(tmp_path / "rescued"), "--json"])
    assert shown.exit_code == 0 and json.loads(shown.output)["manifest"]["int8"]["fp32_nodes"] == kept
    # the C++ runner runs the mixed file as Python does
    batch = np.random.default_rng(2).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32) * 0.5
    np.save(tmp_path / "x.npy", batch)
    run_ok(binaries["release"], tmp_path / "rescued", tmp_path / "x.npy", "--precision", "int8", "--json",
           "--threads", "2", "--dump-outputs", tmp_path / "logits")
    with load_export(tmp_path / "rescued", device="cpu", precision="int8", threads=2) as model:
        expected = model.run(batch)
    for name, ref in expected.items():
        got = np.load(tmp_path / "logits" / f"{name}.npy")
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max(), name


def test_a_constant_image_calibration_fails_the_gate(trained, tmp_path):
    _, tasks = trained
    folder = tmp_path / "grey"
    folder.mkdir()
    from PIL import Image

    for i in range(16):
        Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(folder / f"{i}.png")
    with pytest.raises(ExportError) as err:
        export_tasks(tasks, tmp_path / "x", batch=(1, 8), int8=True, verify=False, calibration=(str(folder),),
                     calibration_samples=24)
    assert "INT8 gate failed" in str(err.value) and "confidence" in str(err.value)


def test_shape_arithmetic_is_never_quantized(exported):
    out, _ = exported
    model = onnx.load(str(out / "model.int8.onnx"))
    # TF "same" padding is frozen for the export's fixed size: no float size arithmetic is left to quantize
    assert not [n.name for n in model.graph.node if n.op_type in ("Shape", "Ceil")]
    produced = {t: n for n in model.graph.node for t in n.output}
    for node in model.graph.node:
        if node.op_type == "Pad":
            pads = produced.get(node.input[1])
            assert pads is None or pads.op_type != "DequantizeLinear"


def test_shape_nodes_are_the_float_size_arithmetic_off_the_data_path():
    """A graph that still computes "same" padding from its input's shape (a dynamic-size export)."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Cast", ["shape"], ["shape_f"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Div", ["shape_f", "two"], ["half"], name="div"),
        helper.make_node("Ceil", ["half"], ["ceil"], name="ceil"),
        helper.make_node("Relu", ["x"], ["relu"], name="relu"),
        helper.make_node("Mul", ["relu", "two"], ["y"], name="mul"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8]),
         helper.make_tensor_value_info("ceil", TensorProto.FLOAT, [4])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    assert shape_nodes(helper.make_model(graph)) == ["shape", "cast", "div", "ceil"]


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
    assert json.loads(shown.output)["manifest"]["int8"]["target"] == "ort-x86"
    assert CliRunner().invoke(main, ["inspect", str(out)]).exit_code == 0  # the readable form renders too
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


def test_the_activation_form_can_be_forced_and_trt_needs_symmetric(trained, tmp_path):
    _, tasks = trained
    with pytest.raises(ExportError) as err:
        export_tasks(tasks, tmp_path / "x", int8=True, int8_activations="u4")
    assert err.value.param == "int8_activations"
    with pytest.raises(ExportError) as err:
        export_tasks(tasks, tmp_path / "x", int8=True, int8_target="tpu")
    assert err.value.param == "int8_target"
    manifest = export_tasks(tasks[:1], tmp_path / "s8", batch=(1, 8), int8=True, int8_activations="int8",
                            verify=False, calibration_samples=64).to_json()
    assert manifest["int8"]["activations"] == "int8" and manifest["tasks"][0]["int8"]["passed"]
    inits, quant = _qdq(onnx.load(str(tmp_path / "s8" / "model.int8.onnx")))
    assert {inits[n.input[2]].dtype for n in quant} == {np.dtype(np.int8)}
