"""Modular exports: trunk.onnx + branches/<task>.onnx equal the fused graph and PyTorch; add / remove
tasks without touching the others; run only the requested tasks (counted session runs)."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from subtune_edge.cli import main
from subtune_edge.errors import ExportError, RuntimeMissingError, TaskFileError
from subtune_edge.exporters import export_tasks
from subtune_edge.exporters.modular import MODULAR_FILE, add_tasks, remove_tasks, weight_hashes
from subtune_edge.io import sha256_file
from subtune_edge.multitask import TaskModel
from subtune_edge.runtime import OrtRunner, load_export, missing_reason, read_manifest
from subtune_edge.runtime.modular import ModularRunner
from subtune_edge.synthetic import synthetic_task
from subtune_edge.task import save_task
from tests.helpers import SIZE, backbone_for, three_depth_tasks

RTOL = 1e-4


def _x(n: int = 3, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)


def _torch(bb, task, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return TaskModel.from_task(bb, task)(torch.from_numpy(x)).numpy()


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return float(np.abs(a - b).max()) <= RTOL * max(1.0, float(np.abs(b).max()))


def _tasks(name: str):
    bb = backbone_for(name)
    tasks = three_depth_tasks(bb)
    if name == "resnet18":  # a linear probe and a Siamese task read the pooled frozen features too
        tasks += [synthetic_task(bb, "probe", [], 2, seed=5, input_size=(SIZE, SIZE)),
                  synthetic_task(bb, "siam", [bb.unit_names[2]], 3, seed=6, siamese=True, input_size=(SIZE, SIZE))]
    return bb, tasks


@pytest.fixture(scope="module")
def resnet_export(tmp_path_factory):
    bb, tasks = _tasks("resnet18")
    out = tmp_path_factory.mktemp("modular") / "export"
    export_tasks(tasks, out, modular=True, batch=(1, 8))
    return bb, tasks, out


def _copy(src, tmp_path):
    dest = tmp_path / "export"
    shutil.copytree(src, dest)
    return dest


def _check_equal(bb, tasks, out):
    manifest = read_manifest(out)  # every file re-hashed, trunk / branch graphs checked against the layout
    layout = manifest.modular
    by_task = {b.task: b for b in layout.branches}
    assert [b.output for b in layout.branches] == manifest.outputs
    results = [r for r in manifest.info["verification"]["results"] if r["file"] == MODULAR_FILE]
    assert {r["task"] for r in results} == {t.name for t in tasks} and all(r["passed"] for r in results)
    x = _x()
    fused = OrtRunner(out / "model.onnx").infer({"input": x})
    with ModularRunner(out, layout) as runner:
        modular = runner.infer({"input": x})
    for t in tasks:
        ref = _torch(bb, t, x)
        assert _close(modular[t.name], ref) and _close(fused[t.name], ref), t.name
        assert by_task[t.name].taps[0] == ("tap.features" if not t.tuned_units else f"tap.{t.tuned_units[0]}")
    return manifest


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "vit_tiny_patch16_224"])
def test_modular_equals_fused_and_torch(name, tmp_path):
    bb, tasks = _tasks(name)
    export_tasks(tasks, tmp_path / "out", modular=True, batch=(1, 4))
    manifest = _check_equal(bb, tasks, tmp_path / "out")
    depths = [t.depth for t in manifest.modular.taps]
    assert len(set(depths)) == 3  # three branch points, three taps


def test_resnet_taps_probe_and_siamese(resnet_export):
    bb, tasks, out = resnet_export
    manifest = _check_equal(bb, tasks, out)
    layout = manifest.modular
    assert layout.branch("siam").taps == (f"tap.{bb.unit_names[2]}", "tap.features")
    assert layout.branch("probe").taps == ("tap.features",)
    assert layout.trunk.sha256 == sha256_file(out / "trunk.onnx") and layout.trunk.version == 1
    assert layout.trunk.fingerprint == bb.fingerprint == manifest.backbone["fingerprint"]
    assert layout.tap("tap.features").shape == ("batch", bb.num_features)


def test_subset_runs_only_its_sessions(resnet_export):
    _, tasks, out = resnet_export
    x = _x(2)
    with load_export(out, device="cpu") as full:
        every = full.run(x)
    with load_export(out, device="cpu", tasks=["early"]) as model:
        runner = model.runner
        assert isinstance(runner, ModularRunner)
        got = model.run(x)
        assert list(got) == ["early"] and _close(got["early"], every["early"])
        early_tap = runner.layout.branch("early").taps[0]
        assert dict(runner.runs) == {f"trunk.onnx[{early_tap}]": 1, "branches/early.onnx": 1}
        with pytest.raises(ExportError, match="not loaded"):
            model.run(x, tasks=["late"])
    with load_export(out, device="cpu", tasks=["early", "late", "probe"]) as model:
        got = model.run(x, tasks=["late"])  # per call: only late's branch, the trunk to its tap
        assert list(got) == ["late"] and _close(got["late"], every["late"])
        assert set(model.runner.runs) == {f"trunk.onnx[{model.runner.layout.branch('late').taps[0]}]",
                                          "branches/late.onnx"}
        got = model.run(x)
        assert set(got) == {"early", "late", "probe"}
        assert model.runner.runs["branches/middle.onnx"] == 0 and model.runner.runs["branches/siam.onnx"] == 0
        assert all(_close(got[k], every[k]) for k in got)


def test_pruned_strategy_matches(resnet_export):
    _, _, out = resnet_export
    layout = read_manifest(out).modular
    x = _x(2)
    with ModularRunner(out, layout, tasks=["middle"], strategy="pruned") as pruned, \
            ModularRunner(out, layout, tasks=["middle"]) as cut:
        assert _close(pruned.infer({"input": x})["middle"], cut.infer({"input": x})["middle"])
        assert dict(pruned.runs) == {"trunk.onnx": 1, "branches/middle.onnx": 1}


def test_add_task_at_existing_tap_keeps_trunk_bytes(resnet_export, tmp_path):
    bb, tasks, src = resnet_export
    out = _copy(src, tmp_path)
    before = {rel: rec.sha256 for rel, rec in read_manifest(out).files.items()}
    n = len(bb.unit_names)
    new = synthetic_task(bb, "extra", [bb.unit_names[n // 2]], 6, seed=11, input_size=(SIZE, SIZE))
    add_tasks(out, [new])
    manifest = read_manifest(out)
    after = {rel: rec.sha256 for rel, rec in manifest.files.items()}
    assert after["trunk.onnx"] == before["trunk.onnx"] == manifest.modular.trunk.sha256
    assert manifest.modular.trunk.version == 1
    changed = {rel for rel in after if before.get(rel) != after[rel]}
    assert changed == {"branches/extra.onnx", "model.onnx"}  # model.onnx rebuilt from trunk + branches
    assert manifest.modular.fused == "composed" and manifest.task_names[-1] == "extra"
    _check_equal(bb, [*tasks, new], out)


def test_add_task_at_new_tap_rewrites_only_trunk_outputs(resnet_export, tmp_path):
    bb, tasks, src = resnet_export
    out = _copy(src, tmp_path)
    old = read_manifest(out).modular
    old_weights = weight_hashes(out / "trunk.onnx")
    unit = bb.unit_names[3]
    assert f"tap.{unit}" not in [t.name for t in old.taps]
    new = synthetic_task(bb, "newtap", [unit], 4, seed=12, input_size=(SIZE, SIZE))
    with load_export(src, device="cpu") as model:
        before = model.run(_x())
    add_tasks(out, [new])
    layout = read_manifest(out).modular
    assert layout.trunk.version == 2 and layout.trunk.sha256 != old.trunk.sha256
    assert [h["version"] for h in layout.trunk.history] == [1, 2]
    assert weight_hashes(out / "trunk.onnx") == old_weights  # same weights, only another output
    assert [t.name for t in layout.taps] == sorted([*(t.name for t in old.taps), f"tap.{unit}"],
                                                   key=lambda t: next(x.depth for x in layout.taps if x.name == t))
    with load_export(out, device="cpu") as model:
        after = model.run(_x())
    assert all(_close(after[k], before[k]) for k in before)
    _check_equal(bb, [*tasks, new], out)


def test_add_task_refuses_other_weights_and_leaves_export(resnet_export, tmp_path):
    bb, _, src = resnet_export
    out = _copy(src, tmp_path)
    other = copy.deepcopy(bb)
    other.__dict__.pop("fingerprint", None)
    with torch.no_grad():
        next(other.stem.parameters()).add_(0.5)
    task = synthetic_task(other, "alien", [bb.unit_names[-1]], 3, seed=3, input_size=(SIZE, SIZE))
    assert task.fingerprint != bb.fingerprint
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(TaskFileError, match="other frozen weights"):
        add_tasks(out, [task])
    assert sorted(p.name for p in out.rglob("*")) == before
    read_manifest(out)


def test_remove_task_keeps_the_others_verified(resnet_export, tmp_path):
    bb, tasks, src = resnet_export
    out = _copy(src, tmp_path)
    trunk = sha256_file(out / "trunk.onnx")
    manifest = remove_tasks(out, ["middle"])
    assert not (out / "branches" / "middle.onnx").exists()
    assert sha256_file(out / "trunk.onnx") == trunk
    kept = [t for t in tasks if t.name != "middle"]
    assert [r["passed"] for r in manifest.info["verification"]["results"] if r["file"] == "model.onnx"] == [True] * 4
    _check_equal(bb, kept, out)
    with pytest.raises(ExportError, match="no task"):
        remove_tasks(out, [t.name for t in kept])


def test_cli_predict_tasks_and_inspect(resnet_export, tmp_path):
    _, _, out = resnet_export
    img = tmp_path / "img.png"
    from PIL import Image
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 90, 3), dtype=np.uint8)).save(img)
    result = CliRunner().invoke(main, ["predict", str(out), str(img), "--tasks", "early,probe", "--json",
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.output)[0]["tasks"]) == {"early", "probe"}
    shown = CliRunner().invoke(main, ["inspect", str(out), "--json"])
    assert json.loads(shown.output)["manifest"]["modular"]["branches"][0]["taps"]


def test_cli_add_task_on_a_fused_export_is_one_line(tmp_path):
    bb = backbone_for("resnet18")
    task = synthetic_task(bb, "solo", [bb.unit_names[-1]], 3, seed=1, input_size=(SIZE, SIZE))
    export_tasks([task], tmp_path / "fused", batch=(1, 2), verify=False)
    save_task(task, tmp_path / "solo.safetensors")
    result = CliRunner().invoke(main, ["add-task", str(tmp_path / "fused"), "--tasks", "solo",
                                       "--task-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a modular export" in result.output and "--modular" in result.output
    with load_export(tmp_path / "fused", device="cpu", tasks=["solo"]) as model:  # a fused export: outputs filtered
        assert isinstance(model.runner, OrtRunner) and list(model.run(_x(1))) == ["solo"]
    with pytest.raises(ExportError, match="not a modular export"):
        load_export(tmp_path / "fused", device="cpu", modular=True)


def test_cuda_path_needs_a_gpu_and_says_so(resnet_export):
    _, _, out = resnet_export
    runner = ModularRunner(out, read_manifest(out, verify_files=False).modular, device="cuda")
    if missing_reason("ort-cuda") is not None:  # here: CPU-only onnxruntime; the IOBinding path cannot run
        with pytest.raises(RuntimeMissingError, match="onnxruntime-gpu"):
            runner.activate()
    else:  # a CUDA machine: taps stay on the device between sessions, outputs equal the CPU path's
        x = _x(2)
        with runner, ModularRunner(out, runner.layout) as cpu:
            got, ref = runner.infer({"input": x}), cpu.infer({"input": x})
        assert all(_close(got[k], ref[k]) for k in ref)


@pytest.mark.slow
def test_bench_modular_writes_ratios(resnet_export, tmp_path):
    _, _, out = resnet_export
    result = CliRunner().invoke(main, ["bench", str(out), "--modular", "--batch", "1", "--seconds", "0",
                                       "--threads", "1", "--results", str(tmp_path / "res")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "res" / "modular.json").read_text())
    point = data["setups"][0]["points"][0]
    assert {"fused", "modular-all", "modular[early]", "fused[early]", "modular-pruned[early]"} <= set(point["variants"])
    assert point["ratios"]["modular_all_over_fused"] > 0 and 0 < point["flops"]["early"]["ideal_over_fused"] < 1
    assert data["machine"]
