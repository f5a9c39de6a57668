"""Grouped branches (``export --grouped``): tasks tuning the same units as one wider network.

Real timm models (seeded random weights, 64x64), real ONNX files in real ONNX Runtime: the grouped
module and its export must give the plain fused module's outputs within float32 tolerance, for 2
and 3 tasks tuning the same units, beside a task that branches elsewhere.
"""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from subtune_edge.cli import main
from subtune_edge.cost import build_fused
from subtune_edge.errors import ExportError
from subtune_edge.exporters import export_tasks
from subtune_edge.multitask import GroupedMultiTaskModel, MultiTaskModel
from subtune_edge.synthetic import synthetic_task
from subtune_edge.task import save_task

from .helpers import SIZE, backbone_for

CNN = ["resnet18", "tf_efficientnet_lite0", "mobilenetv3_large_100"]


def _tasks(backbone, units, k, other=True):
    """k tasks tuning ``units`` (different weights, different class counts) + one branching elsewhere."""
    tasks = [synthetic_task(backbone, f"g{i}", units, 3 + i, seed=10 + i, input_size=(SIZE, SIZE)) for i in range(k)]
    if other:
        names = backbone.unit_names
        tasks.insert(1, synthetic_task(backbone, "other", [names[len(names) // 2]], 4, seed=99,
                                       input_size=(SIZE, SIZE)))
    return tasks


def _x(n=3, seed=1):
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _close(a, b):
    for u, v in zip(a, b):
        scale = float(np.abs(np.asarray(u)).max())
        np.testing.assert_allclose(np.asarray(v), np.asarray(u), atol=1e-5 * max(scale, 1.0), rtol=1e-4)


@pytest.mark.parametrize("name", CNN)
@pytest.mark.parametrize("k", [2, 3])
def test_grouped_module_equals_plain(name, k):
    backbone = backbone_for(name)
    n = backbone.unit_names
    # the last two units tuned (the paper's setting), and one tuned unit followed by frozen ones
    for units in ([n[-2], n[-1]], [n[-3]]):
        tasks = _tasks(backbone, units, k)
        plain, grouped = MultiTaskModel(backbone, tasks), GroupedMultiTaskModel(backbone, tasks)
        assert grouped.groups == [[0, *range(2, k + 1)]] and "other" not in grouped.grouped_tasks
        with torch.no_grad():
            _close(plain(_x()), grouped(_x()))


def test_grouped_branch_runs_fewer_wider_convolutions():
    backbone = backbone_for("resnet18")
    tasks = _tasks(backbone, ["layer4.0", "layer4.1"], 3, other=False)
    grouped = GroupedMultiTaskModel(backbone, tasks)
    convs = [m for m in grouped.grouped[0].units.modules() if isinstance(m, torch.nn.Conv2d)]
    first = convs[0]
    assert first.in_channels == 256 and first.out_channels == 3 * 512 and first.groups == 1  # stacked filters
    assert all(c.groups == 3 for c in convs[1:] if c.in_channels == 3 * 512)  # grouped after
    # no BatchNorm left in the group (folded), and the plain copies of the grouped tasks are gone
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in grouped.grouped.modules())
    plain_bytes = sum(p.numel() for p in MultiTaskModel(backbone, tasks).parameters())
    grouped_bytes = sum(p.numel() for p in grouped.parameters())
    assert grouped_bytes < plain_bytes  # BN folded, heads padded only to the widest (5 classes)


@pytest.mark.parametrize("name", CNN)
def test_grouped_export_equals_plain_export(name, tmp_path):
    backbone = backbone_for(name)
    n = backbone.unit_names
    tasks = _tasks(backbone, [n[-2], n[-1]], 3)
    plain = export_tasks(tasks, tmp_path / "plain", weights="random", batch=(1, 4), verify=False,
                         branches="plain").to_json()
    grouped = export_tasks(tasks, tmp_path / "grouped", weights="random", batch=(1, 4), grouped=True).to_json()
    assert grouped["verification"]["passed"] is True  # every output against its PyTorch task model
    assert grouped["grouped_branches"] == {"groups": [["g0", "g1", "g2"]], "starts": [n[-2]]}
    assert plain["grouped_branches"] is None
    x = _x(3, seed=5).numpy()
    a = ort.InferenceSession(str(tmp_path / "plain" / "model.onnx")).run(None, {"input": x})
    b = ort.InferenceSession(str(tmp_path / "grouped" / "model.onnx")).run(None, {"input": x})
    _close(a, b)
    graph = onnx.load(str(tmp_path / "grouped" / "model.onnx")).graph
    assert [o.name for o in graph.output] == [t.name for t in tasks]
    assert sum(1 for node in graph.node if node.op_type == "Conv") < \
        sum(1 for node in onnx.load(str(tmp_path / "plain" / "model.onnx")).graph.node if node.op_type == "Conv")


def test_export_cli_grouped_two_tasks(tmp_path):
    backbone = backbone_for("tf_efficientnet_lite0")
    n = backbone.unit_names
    for t in _tasks(backbone, [n[-2], n[-1]], 2):
        save_task(t, tmp_path / f"{t.name}.safetensors")
    out = tmp_path / "export"
    res = CliRunner().invoke(main, ["export", "--tasks", "g0,other,g1", "--task-dir", str(tmp_path), "--out",
                                    str(out), "--weights", "random", "--batch", "1:2", "--grouped", "--json"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["grouped_branches"]["groups"] == [["g0", "g1"]]
    assert manifest["verification"]["passed"] is True


def test_grouped_refuses_stacked_and_other_families():
    backbone = backbone_for("resnet18")
    tasks = _tasks(backbone, ["layer4.1"], 2, other=False)
    with pytest.raises(ExportError, match="choose one") as err:
        build_fused(backbone, tasks, (SIZE, SIZE), with_cost=False, stacked=True, grouped=True)
    assert err.value.param == "grouped"
    vit = backbone_for("vit_tiny_patch16_224")
    vtasks = _tasks(vit, [vit.unit_names[-1]], 2, other=False)
    with pytest.raises(ExportError, match="not vit") as err:
        GroupedMultiTaskModel(vit, vtasks)
    assert err.value.param == "grouped"
    # a family that cannot group is fine when no two tasks share their units: nothing to group
    solo = GroupedMultiTaskModel(vit, vtasks[:1])
    assert solo.groups == []
