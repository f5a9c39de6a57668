"""TensorRT: the parts that need no TensorRT (version dispatch, profiles, the early refusal) run
everywhere; building and running a plan needs TensorRT and a GPU and is skipped, with the reason,
where they are missing."""

import time

import pytest
from click.testing import CliRunner

from subtune_edge.cli import main
from subtune_edge.errors import ExportError, RuntimeMissingError
from subtune_edge.exporters import build_recipe, export_tasks, profile_shapes
from subtune_edge.exporters.shapes import check_batch, parse_batch
from subtune_edge.exporters.tensorrt import INSTALL_HINT, default_timing_cache, trt_major
from subtune_edge.runtime import missing_reason

from .helpers import SIZE, backbone_for, three_depth_tasks

TRT_MISSING = missing_reason("trt")


@pytest.mark.parametrize("version, major", [("10.3.0", 10), ("10.13.2.6", 10), ("11.0.0", 11), ("11.4.1", 11),
                                            ("12.0", 12)])
def test_major_version(version, major):
    assert trt_major(version) == major


def test_tensorrt_10_jetpack_uses_builder_flags_on_the_fp32_onnx():
    fp16 = build_recipe("10.3.0", fp16=True)
    assert (fp16.onnx_file, fp16.builder_flags, fp16.strongly_typed, fp16.precision) == \
        ("model.onnx", ("FP16",), False, "fp16")
    fp32 = build_recipe("10.3.0", fp16=False)
    assert (fp32.onnx_file, fp32.builder_flags, fp32.network_flags) == ("model.onnx", (), ())


@pytest.mark.parametrize("version", ["11.0.0", "11.4.1", "12.1"])
def test_tensorrt_11_is_strongly_typed_and_takes_fp16_from_the_onnx(version):
    fp16 = build_recipe(version, fp16=True)
    assert (fp16.onnx_file, fp16.builder_flags, fp16.strongly_typed) == ("model.fp16.onnx", (), True)
    assert "FP16" not in fp16.builder_flags + fp16.network_flags  # removed in 11
    fp32 = build_recipe(version, fp16=False)
    assert (fp32.onnx_file, fp32.builder_flags, fp32.strongly_typed) == ("model.onnx", (), True)


def test_old_tensorrt_is_refused():
    with pytest.raises(ExportError, match="TensorRT 8.6.1 is too old"):
        build_recipe("8.6.1", fp16=False)


def test_profile_from_the_batch_range():
    assert profile_shapes((1, 32), (224, 224)) == {"min": (1, 3, 224, 224), "opt": (1, 3, 224, 224),
                                                   "max": (32, 3, 224, 224)}
    assert profile_shapes((1, 8, 32), (64, 96)) == {"min": (1, 3, 64, 96), "opt": (8, 3, 64, 96),
                                                    "max": (32, 3, 64, 96)}
    assert profile_shapes((4, 4), (64, 64))["min"] == profile_shapes((4, 4), (64, 64))["max"] == (4, 3, 64, 64)
    with pytest.raises(ExportError):
        profile_shapes((1, 64, 32), (64, 64))


def test_batch_text():
    assert parse_batch("1:32") == (1, 1, 32)
    assert parse_batch("8") == (8, 8, 8)
    assert parse_batch("1:8:32") == (1, 8, 32)
    assert check_batch((2, 4)) == (2, 2, 4)
    for bad in ("0:4", "a:b", "1:2:3:4", "5:1"):
        with pytest.raises(ExportError):
            parse_batch(bad)


def test_timing_cache_lives_in_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_timing_cache() == tmp_path / "subtune-edge" / "tensorrt.timing-cache"


@pytest.mark.skipif(TRT_MISSING is None, reason="TensorRT is installed here: the refusal cannot be shown")
def test_trt_without_tensorrt_fails_at_once_with_the_install_hint(tmp_path):
    # mixed backbones would be refused too, but only after loading: --trt must be refused first
    tasks = [three_depth_tasks(backbone_for("resnet18"))[0], three_depth_tasks(backbone_for("convnext_atto"))[1]]
    start = time.perf_counter()
    with pytest.raises(RuntimeMissingError) as exc:
        export_tasks(tasks, tmp_path / "out", trt=True)
    assert time.perf_counter() - start < 1.0
    assert str(exc.value) == INSTALL_HINT.replace("{param}", "trt") and exc.value.param == "trt"
    assert "pip install 'subtune-edge[trt]'" in INSTALL_HINT
    assert list(tmp_path.iterdir()) == []
    # the CLI refuses before it even looks for the task files
    result = CliRunner().invoke(main, ["export", "--tasks", "nope", "--task-dir", str(tmp_path), "--out",
                                       str(tmp_path / "out"), "--trt"])
    assert result.exit_code == 2 and "error: --trt needs TensorRT" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(TRT_MISSING is not None, reason=f"needs TensorRT and a GPU: {TRT_MISSING}")
def test_trt_build_and_run(tmp_path):  # pragma: no cover - runs only where TensorRT is installed
    tasks = three_depth_tasks(backbone_for("resnet18"))
    manifest = export_tasks(tasks, tmp_path / "out", batch=(1, 8), fp16=True, trt=True,
                            timing_cache=tmp_path / "cache").to_json()
    trt = manifest["tensorrt"]
    assert "model.plan" in manifest["files"] and trt["verification"]["passed"]
    assert trt["profile"]["max"] == [8, 3, SIZE, SIZE]
    assert trt["weights_bytes"] > 0 and trt["activation_bytes"] > 0
    assert (tmp_path / "cache").is_file()
    again = export_tasks(tasks, tmp_path / "out2", batch=(1, 8), fp16=True, trt=True,
                         timing_cache=tmp_path / "cache").to_json()
    assert again["tensorrt"]["timing_cache_reused"] is True
