import json
import os
import struct

import pytest
import torch
from safetensors.torch import save_file

from subtune_edge.backbone import create_backbone
from subtune_edge.errors import TaskFileError
from subtune_edge.synthetic import synthetic_task
from subtune_edge.task import FORMAT_VERSION, load_task, load_tasks, resolve_task_path, save_task

from .helpers import SIZE, backbone_for, tampered


@pytest.fixture
def task(resnet):
    return synthetic_task(resnet, "cats", ["layer3.1", "layer4.1"], 4, seed=3, input_size=(SIZE, SIZE))


def test_round_trip_keeps_tensors_and_metadata(tmp_path, task):
    path = save_task(task, tmp_path / "cats")
    assert path.name == "cats.safetensors"
    loaded = load_task(path)
    assert loaded.tensors.keys() == task.tensors.keys()
    assert all(torch.equal(loaded.tensors[k], task.tensors[k]) for k in task.tensors)
    assert loaded.metadata() == task.metadata()
    assert loaded.tuned_units == ["layer3.1", "layer4.1"]
    assert loaded.preprocessing["input_size"] == [3, SIZE, SIZE]


def test_file_holds_only_tuned_units_and_head(tmp_path, task, resnet):
    loaded = load_task(save_task(task, tmp_path / "cats"))
    prefixes = {k.rsplit(".", 2)[0] if not k.startswith("head.") else "head" for k in loaded.tensors}
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in loaded.tensors if not k.startswith("head.")} \
        == {"layer3.1", "layer4.1"}
    assert "head" in prefixes
    expected = sum(t.numel() for u in ("layer3.1", "layer4.1") for t in resnet.units[u].state_dict().values())
    assert sum(t.numel() for k, t in loaded.tensors.items() if not k.startswith("head.")) == expected


def test_truncated_file_is_refused(tmp_path, task):
    path = save_task(task, tmp_path / "cats")
    data = path.read_bytes()
    for cut in (len(data) - 100, 200, 5):
        path.write_bytes(data[:cut])
        with pytest.raises(TaskFileError, match="corrupt or truncated"):
            load_task(path)


def test_edited_tensor_bytes_are_detected(tmp_path, task):
    path = save_task(task, tmp_path / "cats")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(TaskFileError, match="integrity check"):
        load_task(path)


def _rewrite_metadata(path, change):
    tampered(path)
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = json.loads(header["__metadata__"]["subtune_edge"])
    change(meta)
    header["__metadata__"]["subtune_edge"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def test_other_format_version_is_refused(tmp_path, task):
    path = save_task(task, tmp_path / "cats")
    _rewrite_metadata(path, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(TaskFileError, match="format version 2"):
        load_task(path)


def test_metadata_that_disagrees_with_the_head_is_refused(tmp_path, task):
    path = save_task(task, tmp_path / "cats")
    _rewrite_metadata(path, lambda m: m["head"].update(num_classes=7))
    with pytest.raises(TaskFileError, match="head weight has shape"):
        load_task(path)


def test_plain_safetensors_file_is_not_a_task(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    with pytest.raises(TaskFileError, match="not a subtune-edge task"):
        load_task(path)


def test_task_on_other_weights_is_refused_with_both_fingerprints(tmp_path, task):
    other = create_backbone("resnet18", str(_saved_other_weights(tmp_path)))
    with pytest.raises(TaskFileError, match=r"task 'cats' was trained on other resnet18 weights \(fingerprint "
                                            r"\w{8}… != \w{8}…\); export it with the weights it was trained on"):
        task.check_backbone(other)


def _saved_other_weights(tmp_path):
    model = create_backbone("resnet18", "random").model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["layer1.0.conv1.weight"] += 0.1
    path = tmp_path / "other.pth"
    torch.save(state, path)
    return path


def test_task_for_another_backbone_is_refused(task):
    with pytest.raises(TaskFileError, match="trained on 'resnet18', not 'convnext_atto'"):
        task.check_backbone(backbone_for("convnext_atto"))


def test_unwritable_destination_leaves_nothing(tmp_path, task):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root); permissions cannot be tested")
        with pytest.raises(TaskFileError, match="cannot write task file"):
            save_task(task, locked / "cats")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_save_leaves_no_temporary_files(tmp_path, task):
    save_task(task, tmp_path / "cats")
    save_task(task, tmp_path / "cats")  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cats.safetensors"]


def test_save_into_a_file_path_fails_cleanly(tmp_path, task):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises((TaskFileError, OSError)):
        save_task(task, blocker / "cats")
    assert blocker.read_text() == "x"


def test_task_names_resolve_in_the_task_dir(tmp_path, task):
    save_task(task, tmp_path / "cats")
    assert resolve_task_path("cats", tmp_path) == tmp_path / "cats.safetensors"
    with pytest.raises(TaskFileError, match="unknown task 'dogs'.*tasks there: cats"):
        resolve_task_path("dogs", tmp_path)
    with pytest.raises(TaskFileError, match="given twice"):
        load_tasks(["cats", str(tmp_path / "cats.safetensors")], tmp_path)
