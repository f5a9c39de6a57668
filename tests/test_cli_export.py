"""The export, inspect and predict commands, end to end on task files."""

import json

import pytest
import skimage.data
from click.testing import CliRunner
from PIL import Image

from subtune_edge.cli import main
from subtune_edge.task import save_task

from .helpers import backbone_for, three_depth_tasks


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    for task in three_depth_tasks(backbone_for("convnext_atto")):
        save_task(task, root / "tasks" / task.name)
    for name in ("coffee", "chelsea"):
        Image.fromarray(getattr(skimage.data, name)()).save(root / f"{name}.jpg")
    result = CliRunner().invoke(main, ["export", "--tasks", "early,late,middle", "--task-dir", str(root / "tasks"),
                                       "--out", str(root / "out"), "--batch", "1:4", "--separate", "--fp16"])
    return root, result


def test_export_writes_and_summarises(exported):
    root, result = exported
    assert result.exit_code == 0, result.output
    assert "exported 3 task(s)" in result.output and "verification against PyTorch" in result.output
    assert "NO" not in result.output
    manifest = json.loads((root / "out" / "manifest.json").read_text())
    assert [t["name"] for t in manifest["tasks"]] == ["early", "late", "middle"]  # the order given
    assert sorted(manifest["files"]) == ["model.fp16.onnx", "model.onnx", "separate/early.onnx",
                                         "separate/late.onnx", "separate/middle.onnx"]
    assert manifest["batch"]["max"] == 4 and manifest["verification"]["passed"]


def test_inspect_shows_the_manifest_and_checks_hashes(exported):
    root, _ = exported
    result = CliRunner().invoke(main, ["inspect", str(root / "out")])
    assert result.exit_code == 0, result.output
    for text in ("convnext_atto", "early", "middle", "late", "model.fp16.onnx", "ok", "sharing plan", "onnxruntime"):
        assert text in result.output
    as_json = CliRunner().invoke(main, ["inspect", str(root / "out"), "--json"])
    data = json.loads(as_json.output)
    assert set(data["files_check"].values()) == {"ok"} and data["manifest"]["format"] == "subtune-edge.export"


def test_inspect_fails_on_a_changed_file(exported, tmp_path):
    import shutil

    root, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(root / "out", copy)
    with open(copy / "separate" / "late.onnx", "ab") as f:
        f.write(b"\0")
    result = CliRunner().invoke(main, ["inspect", str(copy)])
    assert result.exit_code == 2
    assert "size differs" in result.output and "error: " in result.output and "late.onnx" in result.output


def test_predict_prints_topk_labels(exported):
    root, _ = exported
    images = [str(root / "coffee.jpg"), str(root / "chelsea.jpg")]
    result = CliRunner().invoke(main, ["predict", str(root / "out"), *images, "--topk", "2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [d["image"] for d in data] == images
    for d in data:
        assert list(d["tasks"]) == ["early", "late", "middle"]
        for top in d["tasks"].values():
            assert len(top) == 2 and top[0]["label"].startswith("class_") and top[0]["score"] >= top[1]["score"]
    table = CliRunner().invoke(main, ["predict", str(root / "out"), images[0], "--fp16"])
    assert table.exit_code == 0 and "coffee.jpg" in table.output and "middle" in table.output


def test_predict_refuses_what_it_cannot_read(exported, tmp_path):
    root, _ = exported
    (tmp_path / "x.jpg").write_text("not an image")
    result = CliRunner().invoke(main, ["predict", str(root / "out"), str(tmp_path / "x.jpg")])
    assert result.exit_code == 2 and "cannot read image" in result.output
    result = CliRunner().invoke(main, ["predict", str(tmp_path), str(tmp_path / "x.jpg")])
    assert result.exit_code == 2 and "no manifest.json" in result.output


@pytest.mark.parametrize("command", ["export", "inspect", "predict"])
def test_help_has_an_example(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0 and "Example:" in result.output and "subtune-edge " + command in result.output
