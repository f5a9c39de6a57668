"""Issue 12 on the export side: no data loss, no tracebacks, nothing read that the user did not ask for.

Each case asserts a non-zero exit (or an ExportError / SubtuneError), one error line that names
the problem, nothing left at the output path, and a foreign folder's files still there.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from subtune_edge.cli import main
from subtune_edge.errors import ExportError, SubtuneError, WeightsError
from subtune_edge.exporters import export_tasks
from subtune_edge.runtime import Manifest, is_export_dir, load_export, read_manifest
from subtune_edge.runtime.manifest import MANIFEST, manifest_digest
from subtune_edge.synthetic import synthetic_task
from subtune_edge.task import save_task

from .helpers import SIZE, backbone_for, tampered

MODEL = "convnext_atto"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """One saved task (prepared at 64x64) and one export of it."""
    root = tmp_path_factory.mktemp("hard")
    backbone = backbone_for(MODEL)
    task = synthetic_task(backbone, "parity", [backbone.unit_names[-1]], 2, seed=3, input_size=(SIZE, SIZE))
    save_task(task, root / "tasks" / task.name)
    out = root / "export"
    export_tasks([task], out, batch=(1, 4), verify=False, separate=True)
    return root, task, out


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def error_line(result) -> str:
    """The CLI's one `error: ...` line (stderr), asserting there is exactly one and no traceback."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def no_leftovers(parent: Path) -> None:
    left = [p.name for p in parent.iterdir() if p.name.endswith((".partial", ".old"))]
    assert not left, left


def export_args(root: Path, out: Path | str, *more: str) -> list[str]:
    return ["export", "--tasks", "parity", "--task-dir", str(root / "tasks"), "--out", str(out), "--weights",
            "random", "--batch", "1:2", "--no-verify", *more]


# -- (1) a foreign folder is never replaced ----------------------------------------------------------
def test_foreign_folder_with_a_manifest_json_is_refused_and_kept(setup, tmp_path):
    root, _, _ = setup
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "manifest.json").write_text('{"manifest_version":3}\n')
    (ext / "background.js").write_text("js\n")
    assert not is_export_dir(ext)
    line = error_line(cli(*export_args(root, ext)))
    assert line.startswith(f"error: --out {ext} is a non-empty folder") and "not an export" in line
    assert (ext / "manifest.json").read_text() == '{"manifest_version":3}\n'
    assert (ext / "background.js").read_text() == "js\n"
    no_leftovers(tmp_path)


def test_an_export_with_a_foreign_file_in_it_is_refused(setup, tmp_path):
    _, task, out = setup
    mine = tmp_path / "mine"
    shutil.copytree(out, mine)
    assert is_export_dir(mine)
    (mine / "notes.txt").write_text("keep me")
    assert not is_export_dir(mine)
    with pytest.raises(SubtuneError, match="not an export"):
        export_tasks([task], mine, batch=(1, 2), verify=False)
    assert (mine / "notes.txt").read_text() == "keep me" and (mine / "separate").is_dir()
    no_leftovers(tmp_path)


# -- (4) the working directory, and stale partial folders --------------------------------------------
def test_export_to_the_working_directory_twice(setup, tmp_path, monkeypatch):
    root, _, _ = setup
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for _ in range(2):  # an empty folder, then an earlier export
        result = cli(*export_args(root, "."))
        assert result.exit_code == 0, result.output
        assert read_manifest(here).task_names == ["parity"]
        assert sorted(p.name for p in here.iterdir()) == ["manifest.json", "model.onnx"]
        no_leftovers(tmp_path)
        no_leftovers(here)


def test_stale_partial_of_a_dead_process_is_removed(setup, tmp_path):
    _, task, _ = setup
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    stale = tmp_path / f".out.{proc.pid}.abc123.partial"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"x" * 1000)
    foreign = tmp_path / ".out.notes.partial"  # not ours: no pid
    foreign.mkdir()
    export_tasks([task], tmp_path / "out", batch=(1, 2), verify=False)
    assert not stale.exists() and foreign.is_dir()
    assert read_manifest(tmp_path / "out").task_names == ["parity"]


# -- (7) malformed manifests: one line, never a traceback --------------------------------------------
def _set(path: str, value):
    def edit(m: dict) -> None:
        keys = path.split(".")
        target = m
        for k in keys[:-1]:
            target = target[int(k)] if isinstance(target, list) else target[k]
        last = keys[-1]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return edit


def _input_32(m: dict) -> None:
    m["input"]["shape"] = ["batch", 3, 32, 32]
    m["preprocessing"]["input_size"] = [3, 32, 32]


BAD_MANIFESTS = [
    ("batch-empty", _set("batch", []), "'batch' is a list, expected a JSON object"),
    ("batch-zero", _set("batch.min", 0), "'batch.min' is a number 0, expected an integer >= 1"),
    ("shape-empty", _set("tasks.0.shape", []), "'tasks[0].shape' is a list, expected [batch, num_classes]"),
    ("task-string", _set("tasks", ["x"]), "'tasks[0]' is a string \"x\", expected a JSON object"),
    ("tasks-empty", _set("tasks", []), "'tasks' is a list, expected a non-empty list"),
    ("preprocessing-null", _set("preprocessing", None), "'preprocessing' is null, expected a JSON object"),
    ("mean-string", _set("preprocessing.mean", "x"),
     "'preprocessing.mean' is a string \"x\", expected a list of 3 numbers"),
    ("labels-int", _set("tasks.0.labels", 5), "'tasks[0].labels' is a number 5, expected a list of strings"),
    ("labels-count", _set("tasks.0.labels", ["a"]), "'tasks[0].labels' is a list, expected empty or 2 labels"),
    ("name-int", _set("tasks.0.name", 123), "'tasks[0].name' is a number 123, expected a non-empty string"),
    ("classes-str", _set("tasks.0.shape", ["batch", "two"]),
     "'tasks[0].shape[1]' is a string \"two\", expected an integer >= 1"),
    ("files-list", _set("files", []), "'files' is a list, expected a JSON object"),
    ("format", _set("format", "other"), "is not a subtune-edge export manifest"),
    ("not-object", lambda m: m.clear() or m.update({"__list__": True}), "is not a subtune-edge export manifest"),
    ("output-not-in-graph", _set("tasks.0.output", "nope"), "has no output 'nope'"),
    ("input-vs-graph", _input_32, "has shape ['batch', 3, 64, 64] but the manifest says ['batch', 3, 32, 32]"),
    ("classes-vs-graph", lambda m: m["tasks"][0].update(shape=["batch", 3], num_classes=3, labels=[]),
     "has 2 classes but the manifest says 3"),
]


def _write_case(out: Path, dest: Path, edit, reseal: bool = True) -> Path:
    shutil.copytree(out, tampered(dest), copy_function=os.link)  # the ONNX files are only read
    (dest / MANIFEST).unlink()
    manifest = json.loads((out / MANIFEST).read_text())
    edit(manifest)
    if reseal:
        manifest["manifest_sha256"] = manifest_digest(manifest)
    (dest / MANIFEST).write_text(json.dumps(manifest))
    return dest


@pytest.mark.parametrize(("case", "edit", "expected"), BAD_MANIFESTS, ids=[c[0] for c in BAD_MANIFESTS])
def test_bad_manifests_are_one_line_export_errors(setup, tmp_path, case, edit, expected):
    _, _, out = setup
    bad = _write_case(out, tmp_path / case, edit)
    with pytest.raises(ExportError) as exc:
        read_manifest(bad)
    assert expected in str(exc.value) and len(str(exc.value).splitlines()) == 1
    with pytest.raises(ExportError, match="manifest|model.onnx"):
        load_export(bad, device="cpu")
    assert expected in error_line(cli("inspect", str(bad)))
    assert expected in error_line(cli("predict", str(bad), str(bad / "x.png")))


def test_not_json_and_nan_are_refused(setup, tmp_path):
    _, _, out = setup
    bad = _write_case(out, tmp_path / "nan", lambda m: None)
    (bad / MANIFEST).write_text((bad / MANIFEST).read_text().replace('"opset": 17', '"opset": NaN'))
    with pytest.raises(ExportError, match="not valid JSON"):
        read_manifest(bad)
    (bad / MANIFEST).write_text("{not json")
    assert "not valid JSON" in error_line(cli("inspect", str(bad)))


# -- (8) the manifest protects itself; paths stay inside ---------------------------------------------
def test_edited_labels_are_refused(setup, tmp_path):
    _, _, out = setup
    bad = _write_case(out, tmp_path / "labels", _set("tasks.0.labels", ["even", "odd"]), reseal=False)
    for run in (lambda: read_manifest(bad), lambda: load_export(bad, device="cpu")):
        with pytest.raises(ExportError, match="was edited after export"):
            run()
    assert "was edited after export" in error_line(cli("inspect", str(bad)))
    assert "was edited after export" in error_line(cli("predict", str(bad), str(bad / "x.png")))


@pytest.mark.parametrize("rel", ["../../../../etc/shadow", "/etc/shadow", "separate/../../x", "C:/x", "a\\..\\b"])
def test_files_outside_the_folder_are_refused_before_hashing(setup, tmp_path, rel):
    _, _, out = setup
    bad = _write_case(out, tmp_path / "paths", lambda m: m["files"].update({rel: {"sha256": "0" * 64, "bytes": 1}}))
    with pytest.raises(ExportError, match="not a relative path inside the export folder"):
        read_manifest(bad, verify_files=False)  # refused by the schema: no file is opened
    assert "not a relative path inside" in error_line(cli("inspect", str(bad)))


def test_a_symlink_leading_out_is_refused(setup, tmp_path):
    _, _, out = setup
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"secret")
    bad = _write_case(out, tmp_path / "link", lambda m: m["files"].update(
        {"extra.bin": {"sha256": "0" * 64, "bytes": 6}}))
    (bad / "extra.bin").symlink_to(secret)
    assert "points outside the export folder" in error_line(cli("inspect", str(bad)))


# -- (9) sizes and image depths ----------------------------------------------------------------------
def test_another_input_size_needs_allow_resize(setup, tmp_path):
    root, _, _ = setup
    out = tmp_path / "small"
    line = error_line(cli(*export_args(root, out, "--input-size", "32,32")))
    assert "prepared at 64x64, not 32x32" in line and "--allow-resize" in line
    assert not out.exists()
    no_leftovers(tmp_path)
    result = cli(*export_args(root, out, "--input-size", "32,32", "--allow-resize"))
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    assert manifest.input.hw == (32, 32) and manifest.task("parity").resized_from == (64, 64)


def test_sixteen_bit_and_float_images_match_their_eight_bit_equivalent(setup, tmp_path):
    _, _, out = setup
    ramp = np.linspace(0, 1, 80 * 80).reshape(80, 80)
    Image.fromarray(np.rint(ramp * 255).astype(np.uint8)).convert("RGB").save(tmp_path / "g8.png")
    Image.fromarray(np.rint(ramp * 65535).astype(np.uint16)).save(tmp_path / "g16.png")
    Image.fromarray(ramp.astype(np.float32)).save(tmp_path / "gf.tif")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I") and Image.open(tmp_path / "gf.tif").mode == "F"
    with load_export(out, device="cpu") as model:
        logits = {name: model([tmp_path / name])["parity"] for name in ("g8.png", "g16.png", "gf.tif")}
    scale = np.abs(logits["g8.png"]).max()
    for name in ("g16.png", "gf.tif"):
        assert np.abs(logits[name] - logits["g8.png"]).max() <= 0.02 * scale, name
    result = cli("predict", str(out), *(str(tmp_path / n) for n in ("g8.png", "g16.png", "gf.tif")), "--json",
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    scores = [r["tasks"]["parity"][0]["score"] for r in json.loads(result.stdout)]
    assert max(scores) - min(scores) < 0.01, scores


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (14000, 14000)).save(path, optimize=True)
    assert path.stat().st_size < 100_000
    return path


def test_decompression_bomb_in_predict_and_export_images(setup, tmp_path, bomb):
    root, _, out = setup
    assert "decompression bomb" in error_line(cli("predict", str(out), str(bomb)))
    dest = tmp_path / "withbomb"
    line = error_line(cli(*export_args(root, dest, "--images", str(bomb))))
    assert "decompression bomb" in line and "bomb.png" in line
    assert not dest.exists()
    no_leftovers(tmp_path)


# -- (10) the umask -----------------------------------------------------------------------------------
@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_export_honours_the_umask(setup, tmp_path):
    _, task, _ = setup
    old = os.umask(0o022)
    try:
        out = tmp_path / "perm"
        export_tasks([task], out, batch=(1, 2), verify=False, separate=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "separate").stat().st_mode) == 0o755
    for rel in ("manifest.json", "model.onnx", "separate/parity.onnx"):
        assert stat.S_IMODE((out / rel).stat().st_mode) == 0o644, rel


# -- (3) weights named inside a task file are never loaded -------------------------------------------
def test_weights_file_named_in_a_task_is_not_loaded(setup, tmp_path):
    _, task, _ = setup
    planted = tmp_path / "evil.pt"
    planted.write_bytes(b"not a checkpoint")
    evil = dataclasses.replace(task, backbone=dataclasses.replace(task.backbone, weights=str(planted)))
    before = planted.stat().st_atime_ns
    with pytest.raises(WeightsError) as exc:
        export_tasks([evil], tmp_path / "out", batch=(1, 2), verify=False)
    assert "never opens a file by itself" in str(exc.value) and exc.value.param == "weights"
    assert not (tmp_path / "out").exists() and planted.stat().st_atime_ns == before


def test_a_file_the_runtime_cannot_load_is_an_export_error(setup, tmp_path):
    _, _, out = setup
    bad = _write_case(out, tmp_path / "garbage", lambda m: None)
    (bad / "model.onnx").unlink()  # a hard link to the fixture's file: replace it, never write through it
    (bad / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ExportError, match="changed since export|size differs"):
        load_export(bad, device="cpu")
    model = load_export(bad, device="cpu", check_hashes=False)
    with pytest.raises(ExportError, match="ort-cpu cannot load .*model.onnx"):
        model.activate()


def test_json_that_is_not_an_object_is_refused(setup, tmp_path):
    _, _, out = setup
    bad = _write_case(out, tmp_path / "list", lambda m: None)
    (bad / MANIFEST).write_text("[]")
    assert "is not a JSON object" in error_line(cli("inspect", str(bad)))
    with pytest.raises(ExportError, match="is not a JSON object"):
        load_export(bad)


def test_manifest_record_round_trips_through_its_json(setup):
    _, _, out = setup
    raw = json.loads((out / MANIFEST).read_text())
    manifest = read_manifest(out)
    assert manifest.to_json() == raw and Manifest.from_json(manifest.to_json()) == manifest
    assert list(manifest.tasks[0].labels) == raw["tasks"][0]["labels"]
    assert manifest.sealed().manifest_sha256 == raw["manifest_sha256"] == manifest_digest(raw)
    assert manifest.task("parity").separate == "separate/parity.onnx" and manifest.batch.dim == "batch"
    with pytest.raises(ExportError, match="no task 'nope'; its tasks are parity"):
        manifest.task("nope")
