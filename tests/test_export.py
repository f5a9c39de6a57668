"""Fused ONNX export of real timm models (random weights, 64x64) checked in real ONNX Runtime.

Each family is exported once per module (fused + separate copies + verification); the tests then
run the files on fresh batches of 1 and 5 and compare with the PyTorch task models.
"""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from subtune_edge.backbone import create_backbone
from subtune_edge.exporters import (
    FP16,
    FP32,
    Tolerance,
    compare_outputs,
    duplicate_initializers,
    export_onnx,
    export_tasks,
    read_manifest,
)
from subtune_edge.exporters.onnx_export import PROTOBUF_LIMIT, module_weight_bytes
from subtune_edge.exporters.shapes import output_name
from subtune_edge.multitask import MultiTaskModel, TaskModel

from .helpers import SIZE, backbone_for, three_depth_tasks

FAMILIES = ["resnet18", "tf_efficientnet_lite0", "vit_tiny_patch16_224", "convnext_atto"]


@pytest.fixture(scope="module", params=FAMILIES)
def exported(request, tmp_path_factory):
    backbone = backbone_for(request.param)
    tasks = three_depth_tasks(backbone)
    out = tmp_path_factory.mktemp(request.param) / "export"
    manifest = export_tasks(tasks, out, batch=(1, 8), separate=True).to_json()
    return backbone, tasks, out, manifest


def _session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _batch(n, seed=1):
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_manifest_describes_the_files(exported):
    backbone, tasks, out, manifest = exported
    assert read_manifest(out).to_json() == json.loads((out / "manifest.json").read_text()) == manifest
    typed = read_manifest(out)
    assert typed.task_names == [t.name for t in tasks] and typed.input.hw == (SIZE, SIZE)
    assert typed.tasks[0].labels == tuple(tasks[0].labels) and typed.batch.max == 8
    assert [t["name"] for t in manifest["tasks"]] == [t.name for t in tasks]
    assert manifest["input"] == {"name": "input", "dtype": "float32", "layout": "NCHW",
                                 "shape": ["batch", 3, SIZE, SIZE]}
    assert manifest["batch"] == {"min": 1, "opt": 1, "max": 8, "dynamic": True}
    assert manifest["backbone"]["fingerprint"] == backbone.fingerprint
    assert set(manifest["files"]) == {"model.onnx", *(f"separate/{t.name}.onnx" for t in tasks)}
    assert all(len(rec["sha256"]) == 64 for rec in manifest["files"].values())
    assert manifest["verification"]["passed"] is True
    assert {(r["file"], r["task"]) for r in manifest["verification"]["results"]} == \
        {(f, t.name) for t in tasks for f in ("model.onnx", f"separate/{t.name}.onnx")}
    assert {i["kind"] for i in manifest["verification"]["inputs"]} == {"seeded", "images"}
    assert len({b["start"] for b in manifest["plan"]["branches"]}) == 3, "tasks must branch at 3 depths"
    assert manifest["plan"]["cost"]["ideal_ratio_flops"] < 1
    assert manifest["sizes"]["fused_bytes"] < manifest["sizes"]["separate_bytes"]
    for key in ("torch", "timm", "onnx", "onnxruntime"):
        assert manifest["versions"][key]
    assert not list(out.parent.glob(".*")), "no staging folder may be left beside the export"


def test_graph_io_and_dynamic_batch(exported):
    _, tasks, out, _ = exported
    model = onnx.load(str(out / "model.onnx"))
    (inp,) = model.graph.input
    assert inp.name == "input" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, SIZE, SIZE]
    assert [o.name for o in model.graph.output] == [t.name for t in tasks]
    for o, t in zip(model.graph.output, tasks):
        assert [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] == ["batch", t.num_classes]
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)


@pytest.mark.parametrize("n", [1, 5])
def test_fused_and_separate_match_each_pytorch_task_model(exported, n):
    backbone, tasks, out, _ = exported
    x = _batch(n)
    fused = _session(out / "model.onnx").run(None, {"input": x.numpy()})
    for task, got in zip(tasks, fused):
        with torch.no_grad():
            ref = TaskModel.from_task(backbone, task)(x).numpy()
        (alone,) = _session(out / "separate" / f"{task.name}.onnx").run(None, {"input": x.numpy()})
        assert got.shape == ref.shape == alone.shape == (n, task.num_classes)
        for result in compare_outputs({task.name: ref}, {task.name: got}, FP32) + \
                compare_outputs({task.name: alone}, {task.name: got}, FP32):
            assert result.passed, result
        np.testing.assert_array_equal(got.argmax(1), ref.argmax(1))


def test_every_frozen_weight_appears_once(exported):
    backbone, tasks, out, manifest = exported
    model = onnx.load(str(out / "model.onnx"))
    assert duplicate_initializers(model) == []
    size = (out / "model.onnx").stat().st_size
    fused_bytes = module_weight_bytes(MultiTaskModel(backbone, tasks))
    # never larger than the unique weights (+2%); smaller only where BatchNorm folded away
    assert size <= 1.02 * fused_bytes
    if backbone.family in ("vit", "convnext"):  # no BatchNorm: the file is the weights
        assert size >= 0.98 * fused_bytes
    # the frozen trunk is stored once: fused < one full model + every task's own tuned units and head
    one_full = (out / "separate" / f"{tasks[0].name}.onnx").stat().st_size
    tuned = sum(v.numel() * 4 for t in tasks for v in t.tensors.values())
    assert size <= 1.02 * (one_full + tuned)
    assert manifest["onnx"]["model.onnx"]["size_ratio"] <= 1.02


@pytest.mark.slow
def test_dynamo_exporter_matches_too(tmp_path):
    backbone = backbone_for("resnet18")
    tasks = three_depth_tasks(backbone)
    fused = MultiTaskModel(backbone, tasks)
    report = export_onnx(fused, tmp_path / "d.onnx", [t.name for t in tasks], (SIZE, SIZE), (1, 4), opset=17,
                         dynamo=True)
    assert report.exporter == "dynamo" and report.opset >= 18 and report.size_ratio <= 1.02
    model = onnx.load(str(tmp_path / "d.onnx"))
    assert duplicate_initializers(model) == []
    assert [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][0] == "batch"
    x = _batch(3)
    got = _session(tmp_path / "d.onnx").run(None, {"input": x.numpy()})
    with torch.no_grad():
        ref = fused(x)
    for g, r in zip(got, ref):
        assert compare_outputs({"o": r.numpy()}, {"o": g})[0].passed


def test_fixed_batch_and_external_data(tmp_path):
    backbone = backbone_for("convnext_atto")
    tasks = three_depth_tasks(backbone)
    fused = MultiTaskModel(backbone, tasks)
    names = [t.name for t in tasks]
    report = export_onnx(fused, tmp_path / "m.onnx", names, (SIZE, SIZE), batch=(2, 2), external_data=True)
    assert report.external_data == "m.onnx.data" and (tmp_path / "m.onnx.data").is_file()
    assert report.bytes > (tmp_path / "m.onnx").stat().st_size * 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    model = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [2, 3, SIZE, SIZE]
    x = _batch(2)
    got = _session(tmp_path / "m.onnx").run(None, {"input": x.numpy()})
    with torch.no_grad():
        ref = fused(x)
    for g, r in zip(got, ref):
        assert compare_outputs({"o": r.numpy()}, {"o": g})[0].passed
    assert PROTOBUF_LIMIT == 2 * 1024**3


def test_output_names_are_identifiers():
    assert output_name("digit") == "digit"
    assert output_name("is-cat?") == "is_cat_"
    assert output_name("5way") == "_5way"
    assert output_name("class") == "_class"
    assert output_name("naïve") == "na_ve"


def test_comparator_reports_scale_relative_error_and_near_ties():
    ref = np.array([[1.0, 0.0, -1.0], [0.5, 0.5001, 0.0], [2.0, 1.0, 0.0]])
    close = ref + 1e-6
    (r,) = compare_outputs({"t": ref}, {"t": close})
    assert r.passed and r.scale == 2.0 and r.max_rel == pytest.approx(5e-7)
    # fp16-sized error: fails fp32, passes fp16; the flipped near-tie (row 2) is not held against it
    noisy = ref + np.array([[2e-3, 0, 0], [2e-3, 0, 0], [0, 0, 0]])
    (r32,) = compare_outputs({"t": ref}, {"t": noisy}, FP32)
    (r16,) = compare_outputs({"t": ref}, {"t": noisy}, FP16)
    assert not r32.passed and "output scale" in r32.reason
    assert r16.passed and r16.top1_agreement == pytest.approx(2 / 3) and r16.near_ties == 1
    # a decisive flip fails even within the error bound
    loose = Tolerance("loose", rel=1.0, tie=0.01)
    flipped = ref.copy()
    flipped[2] = [0.0, 1.0, 2.0]
    (rf,) = compare_outputs({"t": ref}, {"t": flipped}, loose)
    assert not rf.passed and "top-1 differs on 1" in rf.reason
    (missing,) = compare_outputs({"t": ref}, {"u": ref})
    assert not missing.passed and "missing" in missing.reason
    (nan,) = compare_outputs({"t": ref}, {"t": ref * np.nan})
    assert not nan.passed and "non-finite" in nan.reason
    (shape,) = compare_outputs({"t": ref}, {"t": ref[:2]})
    assert not shape.passed and "shape" in shape.reason


def test_with_trained_like_batchnorm_the_file_is_the_unique_weights(tmp_path):
    # timm's random init zeroes the last BatchNorm scale of residual blocks; trained nets have none,
    # and then the fused file must be the fused module's unique weights within 2%, both ways
    backbone = create_backbone("resnet18", "random")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in backbone.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    tasks = three_depth_tasks(backbone)
    fused = MultiTaskModel(backbone, tasks)
    report = export_onnx(fused, tmp_path / "m.onnx", [t.name for t in tasks], (SIZE, SIZE))
    assert 0.98 <= report.size_ratio <= 1.02
    assert duplicate_initializers(onnx.load(str(tmp_path / "m.onnx"))) == []
