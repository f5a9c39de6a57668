"""Pruned branches (``tune --prune``): narrower tuned units exported beside full-width tasks.

Real timm models (seeded random weights, 64x64), torch-pruning's real dependency graph, real ONNX
files in real ONNX Runtime: a pruned task must give the same outputs from PyTorch, from its reloaded
file and from the fused export; frozen weights stay the shared ones; what cannot be pruned, or run
grouped, is refused in one line.
"""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file

from subtune_edge.backbone import BackboneSpec
from subtune_edge.cli import main
from subtune_edge.data import DataSpec
from subtune_edge.errors import ExportError, PruneError, TaskFileError
from subtune_edge.exporters import export_tasks
from subtune_edge.multitask import MultiTaskModel
from subtune_edge.prune import PruneConfig, check_ratio
from subtune_edge.runtime import load_export
from subtune_edge.search import GreedyConfig, SearchSetup, greedy_select
from subtune_edge.search.latency import LatencyTable
from subtune_edge.synthetic import synthetic_task
from subtune_edge.task import METADATA_KEY, load_task, save_task
from subtune_edge.train import TrainConfig

from .helpers import SIZE, backbone_for, tampered

HALF = PruneConfig(0.5)
COMMON = ["--weights", "random", "--input-size", "32", "--epochs", "1", "--train-samples", "40",
          "--val-samples", "40", "--batch-size", "16", "--no-progress"]
CNN = ["resnet18", "tf_efficientnet_lite0", "mobilenetv3_large_100"]


def _x(n=3, seed=1):
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _close(ref, got, what):
    ref, got = np.asarray(ref), np.asarray(got)
    assert ref.shape == got.shape, what
    assert np.abs(got - ref).max() <= 1e-4 * max(float(np.abs(ref).max()), 1.0), what


def _trio(backbone, ratio=0.5):
    """A pruned task on the last two units, an unpruned one on the same units and one branching earlier."""
    n = backbone.unit_names
    size = (SIZE, SIZE)
    return [synthetic_task(backbone, "narrow", n[-2:], 5, seed=1, input_size=size, prune=PruneConfig(ratio)),
            synthetic_task(backbone, "wide", n[-2:], 4, seed=2, input_size=size),
            synthetic_task(backbone, "early", [n[len(n) // 2]], 3, seed=3, input_size=size)]


@pytest.mark.parametrize("name", CNN)
def test_pruned_task_exports_fused_with_two_unpruned(name, tmp_path):
    backbone = backbone_for(name)
    narrow, wide, early = _trio(backbone)
    p = narrow.pruned
    assert p["ratio"] == 0.5 and p["channels"] and p["flops"]["after"] < 0.8 * p["flops"]["before"], p
    for pairs in p["channels"].values():
        assert all(kept < of for kept, of in pairs)
    # the file holds the narrower tensors: smaller by about the share of the tuned parameters pruned
    files = {t.name: save_task(t, tmp_path / t.name) for t in (narrow, wide)}
    params = {t.name: sum(v.numel() for v in t.tensors.values()) for t in (narrow, wide)}
    size_ratio = files["narrow"].stat().st_size / files["wide"].stat().st_size
    assert size_ratio == pytest.approx(params["narrow"] / params["wide"], abs=0.03) and size_ratio < 0.8, size_ratio
    loaded = load_task(files["narrow"])
    assert loaded.pruned == narrow.pruned and loaded.prune_ratio == 0.5
    for k, v in narrow.tensors.items():
        assert torch.equal(loaded.tensors[k], v), k
    tasks = [loaded, wide, early]
    x = _x()
    with torch.no_grad():
        expected = MultiTaskModel(backbone, tasks).eval()(x)
        alone = MultiTaskModel(backbone, [narrow]).eval()(x)
    _close(alone[0], expected[0], "the pruned task in company")
    manifest = export_tasks(tasks, tmp_path / "out", input_size=(SIZE, SIZE), batch=(1, 4), branches="plain")
    info = {t["name"]: t for t in manifest.to_json()["tasks"]}
    assert info["narrow"]["pruned"]["ratio"] == 0.5 and not info["wide"].get("pruned")
    with load_export(tmp_path / "out", device="cpu", threads=1) as model:
        got = model.run(x.numpy())
    for t, ref in zip(tasks, expected):
        _close(ref, got[t.name], t.name)


def test_only_channels_the_task_owns_are_pruned():
    backbone = backbone_for("resnet18")
    size = (SIZE, SIZE)
    # layer4.1 alone: its output joins a residual sum with frozen layer4.0's, so only its inner conv narrows
    alone = synthetic_task(backbone, "t", ["layer4.1"], 3, seed=0, input_size=size, prune=HALF)
    shapes = {k: tuple(v.shape) for k, v in alone.tensors.items()}
    assert shapes["layer4.1.conv1.weight"] == (256, 512, 3, 3) and shapes["layer4.1.conv2.weight"] == (512, 256, 3, 3)
    assert alone.pruned["channels"] == {"layer4.1": [[256, 512]]} and "features" not in alone.pruned
    assert alone.head_in_features == 512
    # both blocks tuned: the residual stream between them and the head is the task's own and narrows too,
    # but what they read from the frozen layer3 keeps its 256 channels
    both = synthetic_task(backbone, "t", ["layer4.0", "layer4.1"], 3, seed=0, input_size=size, prune=HALF)
    shapes = {k: tuple(v.shape) for k, v in both.tensors.items()}
    assert shapes["layer4.0.conv1.weight"] == (256, 256, 3, 3)
    assert shapes["layer4.0.downsample.0.weight"] == (256, 256, 1, 1)
    assert shapes["head.weight"] == (3, 256) and both.pruned["features"] == 256 == both.head_in_features
    # the frozen trunk's tensors are never in a task file
    assert not [k for k in both.tensors if not k.startswith(("layer4.", "head."))]


@pytest.mark.parametrize("name,where", [("convnext_atto", "mlp"), ("vit_tiny_patch16_224", "mlp")])
def test_transformer_like_units_prune_their_mlp_only(name, where, tmp_path):
    backbone = backbone_for(name)
    units = backbone.unit_names[-1:]
    task = synthetic_task(backbone, "t", units, 3, seed=0, input_size=(SIZE, SIZE), prune=HALF)
    full = synthetic_task(backbone, "t", units, 3, seed=0, input_size=(SIZE, SIZE))
    narrowed = {k for k, v in task.tensors.items() if v.shape != full.tensors[k].shape}
    assert narrowed and all(f".{where}." in k for k in narrowed), narrowed  # attention / LayerNorm keep their width
    loaded = load_task(save_task(task, tmp_path / "t"))
    x = _x(2)
    with torch.no_grad():
        a = MultiTaskModel(backbone, [task]).eval()(x)[0]
        b = MultiTaskModel(backbone, [loaded]).eval()(x)[0]
    assert torch.equal(a, b)


@pytest.mark.parametrize("ratio", [0, 0.0, 1.0, 1.2, -0.5, float("nan"), "0.5", True])
def test_ratios_outside_the_open_interval_are_refused(ratio):
    with pytest.raises(PruneError) as err:
        check_ratio(ratio)
    message = err.value.render("--prune")
    assert "\n" not in message and "(0, 0.95]" in message and "--prune" in message


@pytest.mark.parametrize("args,expect", [
    (["--prune", "1.2"], "(0, 0.95]"),
    (["--prune", "0"], "(0, 0.95]"),
    (["--prune", "half"], "a ratio such as 0.5"),
    (["--prune", "auto"], "give a latency budget"),
    (["--prune", "auto", "--blocks", "layer4"], "with --blocks UNITS give a ratio"),
    (["--prune", "0.5", "--blocks", "none"], "linear probe"),
])
def test_cli_refuses_bad_pruning_in_one_line(args, expect, tmp_path):
    result = CliRunner().invoke(main, ["tune", "resnet18", "--data", "digits:parity", "--name", "t",
                                       "--task-dir", str(tmp_path), *COMMON, *args])
    assert result.exit_code != 0
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert any(expect in ln for ln in lines), result.output
    assert not (tmp_path / "t.safetensors").exists()


def test_cli_tune_prune_trains_prunes_and_finetunes(tmp_path):
    result = CliRunner().invoke(main, ["tune", "resnet18", "--data", "digits:parity", "--name", "t", "--blocks",
                                       "layer4.1", "--prune", "0.5", "--prune-epochs", "1", "--task-dir",
                                       str(tmp_path), *COMMON])
    assert result.exit_code == 0, result.output
    task = load_task(tmp_path / "t.safetensors")
    p = task.pruned
    assert p["ratio"] == 0.5 and p["finetune_epochs"] == 1 and p["channels"] == {"layer4.1": [[256, 512]]}
    assert 0 <= p["unpruned_val_accuracy"] <= 1 and p["flops"]["after"] < p["flops"]["before"]
    phases = [row.get("phase") for row in task.training["history"]]
    assert phases.count("prune-finetune") == 1 and phases[0] != "prune-finetune", phases


def test_a_unit_whose_channels_all_reach_the_trunk_is_refused_in_one_line():
    backbone = backbone_for("tf_efficientnet_lite0")
    # blocks.0.0 is depthwise then pointwise to the trunk's width: every channel is the frozen stem's
    with pytest.raises(PruneError) as err:
        synthetic_task(backbone, "t", ["blocks.0.0"], 3, seed=0, input_size=(SIZE, SIZE), prune=HALF)
    message = err.value.render("--prune")
    assert "\n" not in message and "efficientnet" in message and "--prune" in message


def test_grouped_branches_refuse_tasks_of_different_widths(tmp_path):
    backbone = backbone_for("resnet18")
    narrow, wide, early = _trio(backbone)
    with pytest.raises(ExportError) as err:
        export_tasks([narrow, wide, early], tmp_path / "out", input_size=(SIZE, SIZE), branches="grouped")
    message = str(err.value)
    assert "\n" not in message and "'narrow'" in message and "different widths" in message
    assert "branches plain" in message and not (tmp_path / "out").exists()
    # two tasks pruned alike share one grouped branch
    twin = synthetic_task(backbone, "twin", backbone.unit_names[-2:], 6, seed=4, input_size=(SIZE, SIZE), prune=HALF)
    manifest = export_tasks([narrow, twin], tmp_path / "g", input_size=(SIZE, SIZE), branches="grouped",
                            batch=(1, 2))
    assert manifest.to_json()["grouped_branches"], "pruned alike: one grouped branch"
    # auto does not offer a grouped form for different widths: there is nothing to time
    manifest = export_tasks([narrow, wide], tmp_path / "a", input_size=(SIZE, SIZE), branches="auto", batch=(1, 2))
    assert manifest.to_json()["branches"] == {"mode": "auto", "chosen": "plain",
                                              "reason": "no two tasks tune the same units"}


def _retag(path, out, edit):
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    data = json.loads(meta[METADATA_KEY])
    edit(data, tensors)
    save_file(tensors, str(out), metadata={**meta, METADATA_KEY: json.dumps(data)})
    return tampered(out)


@pytest.mark.parametrize("case", ["features", "ratio", "unpruned_shape"])
def test_tampered_pruned_records_are_refused_in_one_line(case, tmp_path):
    backbone = backbone_for("resnet18")
    task = synthetic_task(backbone, "t", ["layer4.1"], 3, seed=0, input_size=(SIZE, SIZE), prune=HALF)
    path = save_task(task, tmp_path / "t")

    def edit(meta, tensors):
        if case == "features":
            meta["pruned"]["features"] = 384
        elif case == "ratio":
            meta["pruned"]["ratio"] = 1.5
        else:  # the record is dropped but the tensors stay narrow
            del meta["pruned"]

    bad = _retag(path, tmp_path / "bad.safetensors", edit)
    with pytest.raises(TaskFileError) as err:
        load_task(bad).check_backbone(backbone)  # a record without its shapes is only refused against the backbone
    message = str(err.value)
    assert "\n" not in message, message
    expect = {"features": "expected 384 (pruned.features)", "ratio": "pruned",
              "unpruned_shape": "do not match resnet18"}
    assert expect[case] in message, message


def test_latency_budget_is_met_by_pruning_when_unpruned_sets_do_not_fit():
    units = ["layer3.1", "layer4.0", "layer4.1"]
    table = LatencyTable("resnet18", "ort-cpu", 1, "test device", (("layer3.1", 3.0), ("layer4.0", 2.0),
                                                                    ("layer4.1", 1.0)),
                         (("layer4.0", 0.5, 0.8), ("layer4.1", 0.5, 0.4), ("layer3.1", 0.5, 2.0)))
    setup = SearchSetup(BackboneSpec("resnet18", "random"),
                        DataSpec("digits:parity", (32, 32), train_samples=48, val_samples=40),
                        TrainConfig(epochs=1, batch_size=16), prune=PruneConfig(epochs=1))
    budget = 0.9  # no tuned unit fits unpruned (the cheapest adds 1.0 ms); layer4.0 or layer4.1 pruned do
    result = greedy_select(setup, GreedyConfig(candidates=tuple(units), epsilon=0.0, max_latency_ms=budget,
                                               latency_table=table, prune="auto", prune_ratios=(0.5,)))
    evaluated = [c for s in result.searches.values() for r in s["rounds"] for c in r["candidates"]]
    assert evaluated and all(c["prune"] == 0.5 for c in evaluated), evaluated
    assert all(table.latency(c["units"]) > budget >= table.latency(c["units"], 0.5) for c in evaluated)
    assert ["layer3.1"] not in [c["units"] for c in evaluated], "over budget even pruned: never trained"
    assert result.prune == (0.5 if result.units else 0.0)
    assert table.latency(result.units, result.prune) <= budget


@pytest.mark.slow
def test_cpp_runner_runs_a_pruned_task_beside_full_width_ones(binaries, tmp_path):
    """The C++ runner needs nothing to know about pruning: the fused and the modular export give Python's outputs."""
    from .cpp import run_ok

    backbone = backbone_for("resnet18")
    tasks = _trio(backbone)
    export_tasks(tasks, tmp_path / "out", input_size=(SIZE, SIZE), batch=(1, 4), branches="plain", modular=True,
                 separate=True)
    x = _x(3, seed=5).numpy()
    np.save(tmp_path / "x.npy", x)
    with torch.no_grad():
        expected = MultiTaskModel(backbone, tasks).eval()(torch.from_numpy(x))
    for layout, extra in (("fused", []), ("modular", ["--tasks", "narrow,early"])):
        out = tmp_path / layout
        proc = run_ok(binaries["release"], tmp_path / "out", tmp_path / "x.npy", "--json", "--threads", "2",
                      "--dump-outputs", out, *extra)
        assert json.loads(proc.stdout)["tasks"], proc.stdout
        for task, ref in zip(tasks, expected):
            if (out / f"{task.name}.npy").exists() or layout == "fused":
                _close(ref, np.load(out / f"{task.name}.npy"), f"{layout} {task.name}")
    shown = CliRunner().invoke(main, ["inspect", str(tmp_path / "out"), "--json"])
    assert shown.exit_code == 0, shown.output
    tasks_shown = {t["name"]: t for t in json.loads(shown.output)["manifest"]["tasks"]}
    assert tasks_shown["narrow"]["pruned"]["ratio"] == 0.5 and "pruned" not in tasks_shown["wide"]
    assert sorted(p.name for p in (tmp_path / "modular").iterdir()) == ["early.npy", "narrow.npy"]
