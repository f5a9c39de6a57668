"""fp16 exports: fp16 weights and compute, float32 I/O, verified against the fp32 PyTorch models."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from subtune_edge.exporters import (
    FP16,
    compare_outputs,
    convert_fp16,
    duplicate_initializers,
    export_onnx,
    export_tasks,
)
from subtune_edge.exporters.fp16 import float_casts
from subtune_edge.multitask import MultiTaskModel, TaskModel

from .helpers import SIZE, backbone_for, three_depth_tasks


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})


def _float_initializers(model):
    kinds = {}
    for init in model.graph.initializer:
        kinds[init.data_type] = kinds.get(init.data_type, 0) + init.ByteSize()
    return kinds


def test_export_with_fp16_is_verified_and_listed(tmp_path):
    # TF-ported EfficientNet: dynamic 'same' padding puts Cast(to=float) shape arithmetic in the graph
    backbone = backbone_for("tf_efficientnet_lite0")
    tasks = three_depth_tasks(backbone)
    manifest = export_tasks(tasks, tmp_path / "out", batch=(1, 4), fp16=True).to_json()
    assert "model.fp16.onnx" in manifest["files"]
    results = [r for r in manifest["verification"]["results"] if r["file"] == "model.fp16.onnx"]
    assert [r["task"] for r in results] == [t.name for t in tasks]
    assert all(r["passed"] and r["tolerance"] == "fp16" and r["top1_agreement"] == 1.0 for r in results)
    assert all(1e-6 < r["max_rel"] < 1e-2 for r in results), "fp16 really runs in fp16, within 1% of the scale"
    tols = manifest["verification"]["tolerances"]
    assert tols["fp16"] == {"name": "fp16", "rel": FP16.rel, "tie": FP16.tie}
    fp32, fp16 = manifest["files"]["model.onnx"]["bytes"], manifest["files"]["model.fp16.onnx"]["bytes"]
    assert 0.45 < fp16 / fp32 < 0.56
    model = onnx.load(str(tmp_path / "out" / "model.fp16.onnx"))
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]
    assert {o.type.tensor_type.elem_type for o in model.graph.output} == {onnx.TensorProto.FLOAT}
    kinds = _float_initializers(model)
    assert kinds.get(onnx.TensorProto.FLOAT16, 0) > 100 * kinds.get(onnx.TensorProto.FLOAT, 0)
    assert duplicate_initializers(model) == []


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "convnext_atto"])
def test_convert_fp16_matches_fp32_pytorch_within_stated_tolerance(tmp_path, name):
    backbone = backbone_for(name)
    tasks = three_depth_tasks(backbone)
    fused = MultiTaskModel(backbone, tasks)
    names = [t.name for t in tasks]
    export_onnx(fused, tmp_path / "m.onnx", names, (SIZE, SIZE), (1, 8))
    fp32_model = onnx.load(str(tmp_path / "m.onnx"))
    report = convert_fp16(tmp_path / "m.onnx", tmp_path / "m16.onnx", names)
    assert report["float32_casts_kept"] == len(float_casts(fp32_model))
    x = torch.randn(6, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    got = _run(tmp_path / "m16.onnx", x.numpy())
    for task, g in zip(tasks, got):
        assert g.dtype == np.float32
        with torch.no_grad():
            ref = TaskModel.from_task(backbone, task)(x).numpy()
        (result,) = compare_outputs({task.name: ref}, {task.name: g}, FP16)
        assert result.passed, result
        assert result.max_rel > 1e-6  # computed in fp16, not silently in fp32
