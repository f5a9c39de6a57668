"""load_export: the Python runner apps and the C++ runner are checked against."""

import math
import shutil

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from subtune_edge.errors import ExportError, RuntimeMissingError
from subtune_edge.exporters import export_tasks
from subtune_edge.multitask import TaskModel
from subtune_edge.runtime import ExportedModel, load_export, missing_reason, preprocess
from subtune_edge.runtime.manifest import manifest_digest

from .helpers import SIZE, backbone_for, three_depth_tasks

MODEL = "convnext_atto"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    backbone = backbone_for(MODEL)
    tasks = three_depth_tasks(backbone)
    out = tmp_path_factory.mktemp("rt") / "export"
    manifest = export_tasks(tasks, out, batch=(1, 4), verify=False).to_json()
    return backbone, tasks, out, manifest


def _reference(backbone, tasks, x):
    with torch.no_grad():
        return {t.name: TaskModel.from_task(backbone, t)(torch.from_numpy(x)).numpy() for t in tasks}


def _documented_preprocessing(image: Image.Image, pre: dict) -> np.ndarray:
    """exporters/FORMAT.md's steps, written out with PIL alone (what the C++ runner mirrors)."""
    _, h, w = pre["input_size"]
    short = math.floor(h / pre["crop_pct"])
    iw, ih = image.size
    if iw <= ih:
        size = (short, int(short * ih / iw))
    else:
        size = (int(short * iw / ih), short)
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[pre["interpolation"]]
    image = image.convert("RGB").resize(size, resample)
    left, top = int(round((size[0] - w) / 2.0)), int(round((size[1] - h) / 2.0))
    image = image.crop((left, top, left + w, top + h))
    x = np.asarray(image, dtype=np.float32) / 255.0
    x = (x - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)
    return x.transpose(2, 0, 1)


def test_arrays_by_task_name_match_pytorch_across_batch_limits(export):
    backbone, tasks, out, _ = export
    x = np.random.default_rng(5).standard_normal((6, 3, SIZE, SIZE)).astype(np.float32)  # > max batch 4
    with load_export(out, device="cpu") as model:
        assert isinstance(model, ExportedModel) and model.runner.name == "ort-cpu"
        assert model.task_names == [t.name for t in tasks]
        got = model(x)
    ref = _reference(backbone, tasks, x)
    assert list(got) == [t.name for t in tasks]
    for name in got:
        np.testing.assert_allclose(got[name], ref[name], atol=1e-4 * np.abs(ref[name]).max())


def test_images_are_prepared_as_format_md_says(export):
    _, _, out, manifest = export
    pre = manifest["preprocessing"]
    photos = [Image.fromarray(skimage.data.coffee()), Image.fromarray(skimage.data.astronaut()),
              Image.fromarray(skimage.data.camera())]  # landscape, square, greyscale
    ours = preprocess(photos, pre)
    assert ours.shape == (3, 3, SIZE, SIZE) and ours.dtype == np.float32
    for photo, x in zip(photos, ours):
        np.testing.assert_allclose(x, _documented_preprocessing(photo, pre), atol=1e-5)


def test_paths_pil_images_and_uint8_arrays_give_the_same_outputs(export, tmp_path):
    backbone, tasks, out, manifest = export
    array = skimage.data.chelsea()
    path = tmp_path / "cat.png"
    Image.fromarray(array).save(path)
    with load_export(out, device="cpu") as model:
        by_path = model([path])
        by_str = model(str(path))
        by_pil = model([Image.open(path)])
        by_array = model([array])
        by_batch = model(array[None])  # N x H x W x C uint8
    ref = _reference(backbone, tasks, preprocess([array], manifest["preprocessing"]))
    for name in ref:
        for got in (by_path, by_str, by_pil, by_array, by_batch):
            np.testing.assert_allclose(got[name], ref[name], atol=1e-4 * np.abs(ref[name]).max())


def test_predict_gives_labelled_topk(export):
    _, tasks, out, _ = export
    images = [skimage.data.coffee(), skimage.data.rocket()]
    with load_export(out, device="auto") as model:
        results = model.predict(images, topk=2)
        logits = model(images)
    assert len(results) == 2
    for i, per_task in enumerate(results):
        assert list(per_task) == [t.name for t in tasks]
        for t in tasks:
            top = per_task[t.name]
            assert len(top) == 2 and top[0][1] >= top[1][1]
            assert top[0][0] == t.labels[int(logits[t.name][i].argmax())]
            assert 0 < top[0][1] <= 1


def test_fixed_batch_export_pads_and_trims(tmp_path):
    backbone = backbone_for(MODEL)
    tasks = three_depth_tasks(backbone)[:1]
    export_tasks(tasks, tmp_path / "fixed", batch=(2, 2), verify=False)
    x = np.random.default_rng(1).standard_normal((5, 3, SIZE, SIZE)).astype(np.float32)
    with load_export(tmp_path / "fixed", device="cpu") as model:
        assert model.manifest.input.shape[0] == 2
        one, five = model(x[:1]), model(x)
    ref = _reference(backbone, tasks, x)[tasks[0].name]
    assert one[tasks[0].name].shape == (1, tasks[0].num_classes) and five[tasks[0].name].shape == ref.shape
    np.testing.assert_allclose(five[tasks[0].name], ref, atol=1e-4 * np.abs(ref).max())


def test_changed_files_and_missing_parts_are_refused(export, tmp_path):
    _, _, out, _ = export
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ExportError, match="model.onnx is changed since export"):
        load_export(copy)
    with pytest.raises(ExportError, match="no model.fp16.onnx; re-export with the 'fp16' option"):
        load_export(out, precision="fp16")
    with pytest.raises(ExportError, match="no manifest.json"):
        load_export(tmp_path)
    with pytest.raises(ExportError, match="unknown device"):
        load_export(out, device="tpu")
    if missing_reason("trt"):
        with pytest.raises(ExportError, match="'trt' option"):
            load_export(out, device="tensorrt")
    with pytest.raises(ExportError, match="does not fit"):
        load_export(out, device="cpu").run(np.zeros((1, 3, SIZE + 1, SIZE), np.float32))


def test_tensorrt_device_needs_tensorrt(export, tmp_path):
    if missing_reason("trt") is None:
        pytest.skip("TensorRT is installed here")
    _, _, out, _ = export
    copy = tmp_path / "with-plan"
    shutil.copytree(out, copy)
    # a manifest listing a plan, on a machine without TensorRT: refused with the runner's install hint
    import json

    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "model.plan").write_bytes(b"not a plan")
    manifest["files"]["model.plan"] = {"sha256": "0" * 64, "bytes": 10}
    manifest["manifest_sha256"] = manifest_digest(manifest)  # resealed, as the exporter would
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RuntimeMissingError, match="trt needs"):
        load_export(copy, device="tensorrt", check_hashes=False)
