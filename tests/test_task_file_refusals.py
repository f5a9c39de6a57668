"""Issue 12, the core's cases: a task file is data, a weights file is never unpickled, names stay in their folder.

Bad task files are built from a real saved task by editing its safetensors metadata (or its
tensors, with a matching content hash), then read by the real loader and, for a few, by the real
CLI: each must give one ``TaskFileError`` / one ``error:`` line naming the file, the field and what
was expected; nothing named inside a file is opened.
"""

from __future__ import annotations

import json
import os
import pickle
import struct

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save as st_save

from subtune_edge.backbone import BackboneSpec, create_backbone
from subtune_edge.cli import main
from subtune_edge.errors import BackboneError, TaskFileError, WeightsError
from subtune_edge.multitask import backbone_for_tasks
from subtune_edge.synthetic import synthetic_task
from subtune_edge.task import METADATA_KEY, content_hash, load_task, load_tasks, save_task, validate_task_name
from subtune_edge.weights import load_state_file

from .helpers import SIZE, tampered


@pytest.fixture
def task(resnet):
    return synthetic_task(resnet, "cats", ["layer4.1"], 3, seed=1, input_size=(SIZE, SIZE))


@pytest.fixture
def saved(tmp_path, task):
    return save_task(task, tmp_path / "tasks" / "cats")


def _read(path):
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return data, n, json.loads(data[8:8 + n])


def _rewrite_metadata(path, change):
    """Replace the task metadata by ``change(meta)`` (which may return a new object or edit in place)."""
    tampered(path)
    data, n, header = _read(path)
    meta = json.loads(header["__metadata__"][METADATA_KEY])
    new = change(meta)
    header["__metadata__"][METADATA_KEY] = json.dumps(meta if new is None else new)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def _rewrite_tensors(path, change):
    """Replace the tensors by ``change(tensors)`` and record their new hash, as an editor who knows the format."""
    data, n, header = _read(path)
    meta = json.loads(header["__metadata__"][METADATA_KEY])
    tensors = load_task(path).tensors
    change(tensors)
    meta["content_sha256"] = content_hash(tensors)
    path.write_bytes(st_save(tensors, metadata={METADATA_KEY: json.dumps(meta)}))


def _delete(*keys):
    def change(meta):
        obj = meta
        for k in keys[:-1]:
            obj = obj[k]
        del obj[keys[-1]]
    return change


def _set(value, *keys):
    def change(meta):
        obj = meta
        for k in keys[:-1]:
            obj = obj[k]
        obj[keys[-1]] = value
    return change


BAD_METADATA = [
    # (edit, what the one line must say)
    (lambda m: [m], "its metadata is a list, expected a JSON object"),
    (lambda m: "cats", 'its metadata is a string "cats", expected a JSON object'),
    (_delete("head"), "field 'head' is missing, expected an object"),
    (_delete("name"), "field 'name' is missing, expected the task name"),
    (_delete("backbone"), "field 'backbone' is missing"),
    (_delete("fingerprint"), "field 'fingerprint' is missing, expected a sha256 hex digest"),
    (_delete("tuned_units"), "field 'tuned_units' is missing, expected a list of distinct unit names"),
    (_delete("head", "num_features"), "field 'head.num_features' is missing, expected a positive integer"),
    (_delete("backbone", "model_name"), "field 'backbone.model_name' is missing, expected a timm model name"),
    (_set("two", "head", "num_classes"), "field 'head.num_classes' is a string \"two\", expected a positive integer"),
    (_set(True, "head", "num_classes"), "field 'head.num_classes' is a boolean true, expected a positive integer"),
    (_set(5, "labels"), "field 'labels' is a number 5, expected a list of class names"),
    (_set(5, "fingerprint"), "field 'fingerprint' is a number 5, expected a sha256 hex digest"),
    (_set(123, "name"), "field 'name' is a number 123, expected the task name"),
    (_set("x", "preprocessing", "mean"), "field 'preprocessing.mean' is a string \"x\", expected a list of 3 numbers"),
    (_set([3, 0, 64], "preprocessing", "input_size"), "field 'preprocessing.input_size' is a list"),
    (_set([3, 64, 10 ** 6], "preprocessing", "input_size"), "expected [3, height, width] with height and width in"),
    (_set([1, 64, 64], "preprocessing", "input_size"), "expected [3, height, width]"),
    (_set("yes", "siamese"), "field 'siamese' is a string \"yes\", expected true or false"),
    (_set(["layer4.1", "layer4.1"], "tuned_units"), "field 'tuned_units' is a list, expected a list of distinct"),
    (_set(7, "head", "in_features"), "field 'head.in_features' is a number 7, expected 512"),
    (_set("../escaped", "name"), "field 'name': task name '../escaped' holds a path separator"),
    (_set("", "name"), "field 'name': task name '' is empty"),
    (_set({"checkpoint_path": "/etc/passwd"}, "backbone", "model_args"),
     "'backbone.model_args': model argument 'checkpoint_path' is not one subtune-edge writes (allowed: img_size)"),
    (_set({"bogus_kw": 1}, "backbone", "model_args"), "model argument 'bogus_kw' is not one subtune-edge writes"),
    (_set({"img_size": "big"}, "backbone", "model_args"), "model argument 'img_size' is 'big', expected a positive"),
    (_set([], "backbone", "model_args"), "field 'backbone.model_args' is a list, expected an object"),
    (_set(None, "backbone", "weights"), "field 'backbone.weights' is null, expected a weights source"),
    (_set(5, "training", "mode"), "field 'training.mode' is a number 5, expected a string"),
    (_set("all", "training"), "field 'training' is a string \"all\", expected an object"),
]


@pytest.mark.parametrize("edit, expected", BAD_METADATA, ids=[e for _, e in BAD_METADATA])
def test_malformed_metadata_is_one_line_naming_the_file_and_field(saved, edit, expected):
    _rewrite_metadata(saved, edit)
    with pytest.raises(TaskFileError) as info:
        load_task(saved)
    message = str(info.value)
    assert message.startswith(f"task file {saved}: ")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize("edit, expected", [
    (_set({"checkpoint_path": "/any/file.pt"}, "backbone", "model_args"), "model argument 'checkpoint_path'"),
    (lambda m: [m], "its metadata is a list"),
    (_delete("head", "num_features"), "field 'head.num_features' is missing"),
])
def test_cli_refuses_a_bad_task_file_in_one_line(saved, edit, expected):
    _rewrite_metadata(saved, edit)
    result = CliRunner().invoke(main, ["plan", "--tasks", "cats", "--task-dir", str(saved.parent)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: task file {saved}: ") and expected in lines[0]
    assert "Traceback" not in result.output


# -- weights named in a task file are never opened -------------------------------------------------
class _Payload:
    """Unpickling this creates ``path``: proof that a file's code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def evil(tmp_path):
    path, ran = tmp_path / "evil.pt", tmp_path / "pwned"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": _Payload(ran)}, f)
    return path, ran


def _task_on_weights_file(tmp_path, resnet, path):
    task = synthetic_task(resnet, "cats", ["layer4.1"], 3, seed=1, input_size=(SIZE, SIZE))
    task.backbone = BackboneSpec("resnet18", str(path), {})
    return load_task(save_task(task, tmp_path / "tasks" / "cats"))


def test_a_weights_path_recorded_in_a_task_is_not_opened_unless_given_again(tmp_path, resnet, evil):
    path, ran = evil
    task = _task_on_weights_file(tmp_path, resnet, path)
    with pytest.raises(WeightsError) as info:
        backbone_for_tasks([task])
    assert str(info.value) == (f"task 'cats' was trained on the weights file {path}; a task file never opens a "
                               "file by itself: pass that file again as weights")
    result = CliRunner().invoke(main, ["plan", "--tasks", "cats", "--task-dir", str(tmp_path / "tasks")])
    assert result.exit_code == 2 and result.stderr.strip().endswith("pass that file again as --weights")
    assert not ran.exists()


def test_a_weights_path_given_again_is_used(tmp_path, resnet):
    state = tmp_path / "resnet18.pth"
    torch.save(resnet.model.state_dict(), state)
    task = _task_on_weights_file(tmp_path, resnet, state)
    assert backbone_for_tasks([task], str(state)).fingerprint == resnet.fingerprint
    result = CliRunner().invoke(main, ["plan", "--tasks", "cats", "--task-dir", str(tmp_path / "tasks"),
                                       "--weights", str(state), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["branches"][0]["start_unit"] == "layer4.1"


def test_hub_random_and_offline_sources_are_taken_from_the_file(saved, resnet):
    assert backbone_for_tasks([load_task(saved)]).fingerprint == resnet.fingerprint  # 'random' from the file


def test_a_pickled_weights_file_is_refused_in_one_line_without_running_it(evil):
    path, ran = evil
    with pytest.raises(WeightsError) as info:
        load_state_file(path)
    assert str(info.value) == (f"weights file {path} holds pickled Python objects, not only tensors; subtune-edge "
                               "never unpickles them: re-save it with torch.save(model.state_dict(), ...) or as "
                               ".safetensors")
    result = CliRunner().invoke(main, ["blocks", "resnet18", "--weights", str(path), "--input-size", "32"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {info.value}"]
    assert "weights_only" not in result.output and "Traceback" not in result.output
    assert not ran.exists()


def test_a_checkpoint_that_is_not_a_plain_state_dict_is_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"conv1.weight": torch.zeros(1), "epoch": 3}, path)
    with pytest.raises(WeightsError, match=r"is not a plain state_dict \(entry 'epoch' is not a tensor\)"):
        load_state_file(path)


def test_model_args_from_python_are_checked_by_timm_in_one_line():
    with pytest.raises(BackboneError, match=r"'resnet18' cannot be created with arguments \{'bogus_kw': 1\}"):
        create_backbone("resnet18", "random", bogus_kw=1)


# -- tensors: heads are floating point, weights are finite -----------------------------------------
@pytest.mark.parametrize("key, value, expected", [
    ("head.weight", lambda t: t.to(torch.int64), "tensor head.weight is torch.int64, expected floating point"),
    ("head.bias", lambda t: t > 0, "tensor head.bias is torch.bool, expected floating point"),
    ("layer4.1.conv1.weight", lambda t: t.to(torch.int32), "tensor layer4.1.conv1.weight is torch.int32"),
    ("layer4.1.bn1.num_batches_tracked", lambda t: t.float(), "is torch.float32, expected an integer counter"),
    ("head.weight", lambda t: t.index_fill(1, torch.tensor([0]), float("nan")), "holds NaN or infinite values"),
])
def test_non_floating_or_non_finite_tensors_are_refused(saved, key, value, expected):
    _rewrite_tensors(saved, lambda ts: ts.__setitem__(key, value(ts[key])))
    with pytest.raises(TaskFileError) as info:
        load_task(saved)
    assert str(info.value).startswith(f"task file {saved}: ") and expected in str(info.value)


def test_non_finite_weights_are_never_saved(tmp_path, task):
    task.tensors["head.weight"][0, 0] = float("inf")
    with pytest.raises(TaskFileError, match="holds NaN or infinite values"):
        save_task(task, tmp_path / "cats")
    assert list(tmp_path.iterdir()) == []


# -- names ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, rule", [
    ("", "is empty"), ("..", "is a '..' or '.' path component"), (".", "is a '..' or '.' path component"),
    ("../escaped", "holds a path separator"), ("a/b", "holds a path separator"), ("a\\b", "holds a path separator"),
    (".hidden", "starts with a dot"), ("tab\there", "holds a non-printable character"),
    (" padded", "starts or ends with a space"), ("x" * 129, "is 129 characters long (at most 128)"),
])
def test_bad_task_names_are_refused_naming_the_rule(name, rule):
    with pytest.raises(TaskFileError) as info:
        validate_task_name(name)
    assert rule in str(info.value) and info.value.param == "name"
    assert str(info.value).startswith("task name ")


@pytest.mark.parametrize("name", ["digit", "ge5", "Cats-v2_final.1", "a b"])
def test_good_task_names_pass(name):
    assert validate_task_name(name) == name


@pytest.mark.parametrize("name", ["../escaped", ""])
def test_save_task_refuses_a_name_that_leaves_its_folder(tmp_path, task, name):
    task.name = name
    folder = tmp_path / "tasks"
    folder.mkdir()
    with pytest.raises(TaskFileError, match="task name"):
        save_task(task, folder / name)
    assert list(tmp_path.rglob("*.safetensors")) == []


def test_load_tasks_refuses_bad_names(saved):
    for name in ("..", ".cats", "x\\y"):
        with pytest.raises(TaskFileError, match="task name"):
            load_tasks([name], saved.parent)
    result = CliRunner().invoke(main, ["plan", "--tasks", "..", "--task-dir", str(saved.parent)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == ["error: task name '..' is a '..' or '.' path component; use "
                                                   "letters, digits, '-', '_' or '.'"]


# -- task files honour the umask -----------------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_task_files_honour_the_umask(tmp_path, task, umask, mode):
    old = os.umask(umask)
    try:
        path = save_task(task, tmp_path / "cats")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


# -- export: the same refusals, before any work, nothing written ------------------------------------
def test_export_refuses_a_task_with_foreign_model_args_before_any_work(tmp_path, saved):
    _rewrite_metadata(saved, _set({"checkpoint_path": str(tmp_path / "any.pt")}, "backbone", "model_args"))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", "--tasks", "cats", "--task-dir", str(saved.parent), "--out", str(out)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "model argument 'checkpoint_path' is not one subtune-edge writes" in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".out*")) and "Traceback" not in result.output


def test_export_never_opens_a_weights_file_named_in_a_task(tmp_path, resnet, evil):
    path, ran = evil
    _task_on_weights_file(tmp_path, resnet, path)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", "--tasks", "cats", "--task-dir", str(tmp_path / "tasks"),
                                       "--out", str(out)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: task 'cats' was trained on ") and str(path) in lines[0]
    assert "--weights" in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".out*")) and not ran.exists()
