"""Every bad input is refused with one line that names it, and leaves no file behind."""

import json

import pytest
import torch
from click.testing import CliRunner

from subtune_edge.backbone import create_backbone
from subtune_edge.cli import main
from subtune_edge.errors import ExportError, SubtuneError, TaskFileError
from subtune_edge.exporters import Tolerance, export_tasks
from subtune_edge.synthetic import synthetic_task
from subtune_edge.task import save_task

from .helpers import SIZE, backbone_for, three_depth_tasks


def _task(backbone, name, seed=0, classes=3):
    return synthetic_task(backbone, name, [backbone.unit_names[-1]], classes, seed=seed, input_size=(SIZE, SIZE))


def _nothing_written(parent, out):
    assert not out.exists()
    assert [p.name for p in parent.iterdir() if p.name.startswith(".")] == [], "a staging folder was left behind"


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_mixed_backbones_name_the_odd_task(tmp_path):
    tasks = [_task(backbone_for("resnet18"), "a"), _task(backbone_for("convnext_atto"), "b")]
    with pytest.raises(TaskFileError) as exc:
        export_tasks(tasks, tmp_path / "out")
    msg = _one_line(exc)
    assert "task 'b'" in msg and "convnext_atto" in msg and "share one backbone" in msg
    _nothing_written(tmp_path, tmp_path / "out")


def test_mismatched_fingerprint_names_the_odd_task(tmp_path):
    base = backbone_for("resnet18")
    state = {k: v.clone() for k, v in base.model.state_dict().items()}
    state["layer1.0.conv1.weight"] += 0.01
    torch.save(state, tmp_path / "other.pt")
    other = create_backbone("resnet18", str(tmp_path / "other.pt"))
    tasks = [_task(base, "a"), _task(base, "b", 1), _task(other, "c", 2)]
    with pytest.raises(TaskFileError) as exc:
        export_tasks(tasks, tmp_path / "out")
    msg = _one_line(exc)
    assert "task 'c'" in msg and "fingerprint" in msg and "same frozen weights" in msg
    _nothing_written(tmp_path, tmp_path / "out")


@pytest.mark.parametrize("names, expected", [
    (["a", "b", "a"], "task name 'a' is given twice"),
    (["is-cat", "is_cat"], "would both be output 'is_cat'"),
    (["input", "b"], "cannot be named 'input'"),
])
def test_duplicate_and_reserved_task_names(tmp_path, names, expected):
    backbone = backbone_for("resnet18")
    tasks = [_task(backbone, n, i) for i, n in enumerate(names)]
    with pytest.raises(ExportError) as exc:
        export_tasks(tasks, tmp_path / "out")
    assert expected in _one_line(exc)
    _nothing_written(tmp_path, tmp_path / "out")


def test_missing_task_is_refused_by_the_cli(tmp_path):
    backbone = backbone_for("resnet18")
    save_task(_task(backbone, "a"), tmp_path / "tasks" / "a")
    result = CliRunner().invoke(main, ["export", "--tasks", "a,nope", "--task-dir", str(tmp_path / "tasks"),
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "error: unknown task 'nope'" in result.output and "tasks there: a" in result.output
    _nothing_written(tmp_path, tmp_path / "out")


def test_unwritable_out_is_refused_before_any_work(tmp_path):
    tasks = [_task(backbone_for("resnet18"), "a")]
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(SubtuneError) as exc:  # a folder inside a file: no user (root included) can create it
        export_tasks(tasks, tmp_path / "a-file" / "out")
    assert "cannot write out" in _one_line(exc)
    with pytest.raises(SubtuneError) as exc:
        export_tasks(tasks, tmp_path / "a-file")
    assert "is a file" in _one_line(exc)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SubtuneError) as exc:
        export_tasks(tasks, tmp_path / "mine")
    assert "not an export" in _one_line(exc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "mine"]
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("kwargs, expected", [
    ({"batch": (0, 4)}, "1 <= min <= opt <= max"),
    ({"batch": (8, 2)}, "1 <= min <= opt <= max"),
    ({"opset": 9}, "opset 9 is outside"),
    ({"input_size": (4, 4)}, "too small"),
])
def test_bad_options(tmp_path, kwargs, expected):
    tasks = [_task(backbone_for("resnet18"), "a")]
    with pytest.raises(ExportError) as exc:
        export_tasks(tasks, tmp_path / "out", **kwargs)
    assert expected in _one_line(exc)
    _nothing_written(tmp_path, tmp_path / "out")


def test_vit_at_another_size_is_refused(tmp_path):
    tasks = [_task(backbone_for("vit_tiny_patch16_224"), "a")]
    with pytest.raises(ExportError) as exc:
        export_tasks(tasks, tmp_path / "out", input_size=(96, 96), verify=False)
    assert "built for 64x64" in _one_line(exc)
    _nothing_written(tmp_path, tmp_path / "out")


def test_failed_verification_keeps_the_previous_export(tmp_path, monkeypatch):
    tasks = three_depth_tasks(backbone_for("convnext_atto"))[:1]
    out = tmp_path / "out"
    first = export_tasks(tasks, out, batch=(1, 4), verify=False).to_json()
    before = (out / "manifest.json").read_text()
    monkeypatch.setattr("subtune_edge.exporters.verification.FP32", Tolerance("impossible", rel=-1.0, tie=0.0))
    with pytest.raises(ExportError) as exc:
        export_tasks(tasks, out, batch=(1, 4), separate=True)
    msg = _one_line(exc)
    assert "verification failed for task 'late' in model.onnx" in msg and "nothing was written" in msg
    assert (out / "manifest.json").read_text() == before
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]
    assert json.loads(before)["files"] == first["files"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "no staging or backup folder may be left"


def test_missing_verification_image_is_refused_before_any_work(tmp_path):
    tasks = [_task(backbone_for("resnet18"), "a")]
    with pytest.raises(ExportError) as exc:
        export_tasks(tasks, tmp_path / "out", images=[tmp_path / "nope.jpg"])
    assert "verification image" in _one_line(exc) and "nope.jpg" in str(exc.value)
    _nothing_written(tmp_path, tmp_path / "out")
