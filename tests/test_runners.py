import numpy as np
import onnxruntime as ort
import pytest
import torch

from subtune_edge.errors import RuntimeMissingError, SubtuneError
from subtune_edge.multitask import MultiTaskModel
from subtune_edge.runtime import OrtRunner, TorchRunner, make_runner, missing_reason, require, runtime_names

from .helpers import SIZE, backbone_for, three_depth_tasks


@pytest.fixture(scope="module")
def fused_onnx(tmp_path_factory):
    backbone = backbone_for("resnet18")
    tasks = three_depth_tasks(backbone)
    module = MultiTaskModel(backbone, tasks)
    path = tmp_path_factory.mktemp("runners") / "m.onnx"
    names = [t.name for t in tasks]
    torch.onnx.export(module, (torch.zeros(1, 3, SIZE, SIZE),), str(path), input_names=["input"], output_names=names,
                      dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in names}}, opset_version=17,
                      dynamo=False)
    return module, names, path


def test_ort_and_torch_runners_agree_through_one_interface(fused_onnx):
    module, names, path = fused_onnx
    x = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    with OrtRunner(path, "cpu", threads=1) as ort_runner, TorchRunner(module, names) as torch_runner:
        assert ort_runner.input_names == ["input"] and ort_runner.output_names == names
        a, b = ort_runner.infer({"input": x}), torch_runner.infer({"input": x})
    assert list(a) == list(b) == names
    for n in names:
        np.testing.assert_allclose(a[n], b[n], atol=1e-4, rtol=1e-4)


def test_staged_runs_time_and_fetch_the_last_outputs(fused_onnx):
    _, names, path = fused_onnx
    runner = make_runner("ort-cpu", path, threads=1)
    x = np.ones((1, 3, SIZE, SIZE), np.float32)
    runner.stage({"input": x})
    times = [runner.run_staged() for _ in range(3)]
    assert all(t > 0 for t in times)
    assert runner.fetch()[names[0]].shape == (1, 3)
    runner.deactivate()
    assert runner.session is None


def test_missing_input_is_named(fused_onnx):
    with OrtRunner(fused_onnx[2]) as r, pytest.raises(SubtuneError, match=r"no value for input\(s\) \['input'\]"):
        r.infer({"image": np.zeros((1, 3, SIZE, SIZE), np.float32)})


def test_each_backend_is_either_runnable_or_says_why_not():
    for backend in runtime_names():
        reason = missing_reason(backend)
        assert reason is None or len(reason.splitlines()) == 1
    assert missing_reason("ort-cpu") is None and missing_reason("torch-cpu") is None
    if not torch.cuda.is_available():
        assert "CUDA GPU" in missing_reason("torch-cuda")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "onnxruntime-gpu" in missing_reason("ort-cuda")
        with pytest.raises(RuntimeMissingError, match="onnxruntime-gpu"):
            require("ort-cuda")
    assert "unknown runtime 'tflite'" in missing_reason("tflite")
    assert "torch-cpu takes +compile" in missing_reason("torch-cpu+graphs")


def test_trt_runner_without_tensorrt_fails_with_the_install_hint(tmp_path):
    reason = missing_reason("trt")
    if reason is None:
        pytest.skip("TensorRT and a GPU are present here")
    runner = make_runner("trt", tmp_path / "model.plan")
    with pytest.raises(RuntimeMissingError, match="trt needs"):
        runner.activate()
