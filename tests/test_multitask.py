import json

import pytest
import torch

from subtune_edge.cost import (
    NECK_POOL,
    PlanCost,
    branch_flops,
    branch_units,
    build_fused,
    ideal_ratio,
    plan_from_json,
    size_of,
    weight_bytes,
)
from subtune_edge.errors import BackboneError, TaskFileError
from subtune_edge.multitask import BranchPlan, MultiTaskModel, TaskModel, backbone_for_tasks, trunk_end
from subtune_edge.synthetic import synthetic_task

from .helpers import SIZE, backbone_for, three_depth_tasks


def _batch(n=3, seed=0):
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_fused_outputs_equal_each_standalone_task_and_trunk_runs_once(family_backbone):
    tasks = three_depth_tasks(family_backbone)
    fused = MultiTaskModel(family_backbone, tasks)
    starts = {b.start for b in fused.plan.branches}
    assert len(starts) == 3, "the three tasks must branch at three depths"
    calls = []
    hook = fused.stem.register_forward_hook(lambda *a: calls.append(1))
    x = _batch()
    try:
        with torch.no_grad():
            outputs = fused(x)
    finally:
        hook.remove()
    assert len(calls) == 1
    assert len(outputs) == 3
    for task, out in zip(tasks, outputs):
        with torch.no_grad():
            ref = TaskModel.from_task(family_backbone, task)(x)
        assert out.shape == (3, task.num_classes)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_each_trunk_unit_runs_once_per_forward(resnet):
    tasks = three_depth_tasks(resnet)
    fused = MultiTaskModel(resnet, tasks)
    counts = {n: 0 for n in resnet.unit_names}
    hooks = [resnet.units[n].register_forward_hook(lambda *a, n=n: counts.__setitem__(n, counts[n] + 1))
             for n in resnet.unit_names]
    try:
        with torch.no_grad():
            fused(_batch(1))
    finally:
        for h in hooks:
            h.remove()
    trunk = fused.plan.trunk_units
    assert all(counts[n] == 1 for n in trunk[:2])  # before any branch: shared once
    # a frozen unit after a branch point runs once in the trunk and once more per branch that keeps it frozen
    last_frozen = resnet.unit_names[-2]
    users = sum(1 for t in tasks if last_frozen not in t.tuned_units and resnet.unit_index(t.tuned_units[0]) <= 6)
    assert counts[last_frozen] == (1 if last_frozen in trunk else 0) + users


def test_frozen_weights_exist_once(resnet):
    tasks = three_depth_tasks(resnet)
    fused = MultiTaskModel(resnet, tasks)
    names = [n for n, _ in fused.named_parameters()]
    assert len(names) == len(set(names))
    ptrs = [p.data_ptr() for p in fused.parameters()]
    assert len(ptrs) == len(set(ptrs))
    # the frozen layer3.1, used after the 'middle' and 'early' branch points, is one object everywhere
    frozen = resnet.units["layer3.1"]
    holders = [u for b in fused.branches for u in b.units if u is frozen]
    assert len(holders) == 2


def test_linear_probe_and_siamese_tasks(family_backbone):
    names = family_backbone.unit_names
    tasks = [synthetic_task(family_backbone, "probe", [], 3, seed=1, input_size=(SIZE, SIZE)),
             synthetic_task(family_backbone, "siam", [names[-2]], 4, seed=2, siamese=True, input_size=(SIZE, SIZE)),
             synthetic_task(family_backbone, "plain", [names[len(names) // 2]], 2, seed=3, input_size=(SIZE, SIZE))]
    fused = MultiTaskModel(family_backbone, tasks)
    assert fused.plan.trunk_end == len(names)
    x = _batch(2)
    with torch.no_grad():
        outputs = fused(x)
        for task, out in zip(tasks, outputs):
            torch.testing.assert_close(out, TaskModel.from_task(family_backbone, task)(x), atol=1e-5, rtol=1e-5)
    assert tasks[1].head_in_features == 2 * family_backbone.num_features


def test_plan_costs_add_up(resnet):
    tasks = three_depth_tasks(resnet)
    fused = build_fused(resnet, tasks, (SIZE, SIZE))
    cost = fused.plan.cost
    assert cost.fused.bytes < cost.separate.bytes
    assert 0 < cost.ideal_ratio_flops < 1
    # fused FLOPs = trunk + every branch (counted independently by the unit table)
    branch_flops = sum(b.flops for b in cost.branches.values())
    assert cost.fused.flops == pytest.approx(cost.trunk.flops + branch_flops, rel=1e-6)
    # separate = one full model per task
    one_full = cost.total_unit_flops
    heads = sum(2 * t.head_in_features * t.num_classes for t in tasks)
    assert cost.separate.flops == pytest.approx(3 * one_full + heads, rel=1e-6)
    # the manifest's JSON reads back to the same typed plan, and the k-task ratio agrees at k = all
    again = plan_from_json(json.loads(json.dumps(fused.plan.to_json())))
    assert again.cost == PlanCost.from_json(cost.to_json()) and again.to_json() == fused.plan.to_json()
    assert ideal_ratio(again) == pytest.approx(cost.ideal_ratio_flops, rel=1e-6)
    assert ideal_ratio(again, 1) > ideal_ratio(again)  # one task shares nothing with others


def test_branch_and_trunk_rules(resnet):
    names = resnet.unit_names
    assert branch_units(names, []) == []
    assert branch_units(names, ["layer4.1", "layer3.0"]) == names[names.index("layer3.0"):]
    flops = {n: 1 for n in names} | {NECK_POOL: 10}
    assert branch_flops(flops, names, ["layer4.1"]) == 1 + 10
    with pytest.raises(BackboneError, match="'layer9.9' is not one of the backbone's units"):
        branch_units(names, ["layer9.9"])
    n = len(names)
    branch = [BranchPlan("a", 3, names[3], [names[3]], False), BranchPlan("b", 5, names[5], [names[5]], False)]
    assert trunk_end(n, branch) == 5
    assert trunk_end(n, [*branch, BranchPlan("p", n, None, [], False)]) == n  # a linear probe reads the end
    assert trunk_end(n, [*branch, BranchPlan("s", 2, names[2], [names[2]], True)]) == n  # so does Siamese
    tasks = three_depth_tasks(resnet)
    plan = MultiTaskModel(resnet, tasks).plan
    assert plan.first_tasks(1).trunk_end == plan.branches[0].start
    assert TaskModel.from_task(resnet, tasks[2]).start == plan.branches[2].start


def test_tasks_of_other_backbones_or_weights_cannot_share_a_trunk(resnet):
    r = synthetic_task(resnet, "r", ["layer4.1"], 2)
    c = synthetic_task(backbone_for("convnext_atto"), "c", ["stages.3.blocks.1"], 2)
    with pytest.raises(TaskFileError, match="task 'c' uses backbone 'convnext_atto'.*share one backbone"):
        backbone_for_tasks([r, c])
    odd = synthetic_task(resnet, "odd", ["layer4.1"], 2)
    odd.fingerprint = "0" * 64
    with pytest.raises(TaskFileError, match="task 'odd' was trained on other resnet18 weights than 'r'"):
        backbone_for_tasks([r, odd])


def test_stacked_branches_give_the_same_outputs(family_backbone):
    from subtune_edge.multitask import StackedMultiTaskModel

    names = family_backbone.unit_names
    tasks = three_depth_tasks(family_backbone) + [
        synthetic_task(family_backbone, "siam", [names[-2]], 2, seed=9, siamese=True, input_size=(SIZE, SIZE)),
        synthetic_task(family_backbone, "probe", [], 2, seed=8, input_size=(SIZE, SIZE))]
    plain, stacked = MultiTaskModel(family_backbone, tasks), StackedMultiTaskModel(family_backbone, tasks)
    x = _batch(2)
    with torch.no_grad():
        for a, b in zip(plain(x), stacked(x)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # names[n//2 + 1] is frozen in both the 'middle' and the 'early' branch: one stacked call of batch 4
    shared = family_backbone.units[names[len(names) // 2 + 1]]
    calls = []
    hook = shared.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        with torch.no_grad():
            plain(x)
            plain_calls, calls[:] = list(calls), []
            stacked(x)
    finally:
        hook.remove()
    assert plain_calls == [2, 2, 2] and calls == [2, 4]


def test_stacked_export_matches_the_plain_export(tmp_path):
    import numpy as np
    import onnxruntime as ort

    from subtune_edge.exporters import export_tasks

    backbone = backbone_for("resnet18")
    tasks = three_depth_tasks(backbone)
    plain = export_tasks(tasks, tmp_path / "plain", weights="random", input_size=(SIZE, SIZE), batch=(1, 4)).to_json()
    stacked = export_tasks(tasks, tmp_path / "stacked", weights="random", input_size=(SIZE, SIZE), batch=(1, 4),
                           stacked=True).to_json()
    assert stacked["stacked_branches"] and not plain["stacked_branches"]
    assert stacked["verification"]["passed"]
    x = np.random.default_rng(1).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    a = ort.InferenceSession(str(tmp_path / "plain" / "model.onnx")).run(None, {"input": x})
    b = ort.InferenceSession(str(tmp_path / "stacked" / "model.onnx")).run(None, {"input": x})
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, atol=1e-5, rtol=1e-5)


def test_shared_weights_are_counted_once(resnet):
    tasks = three_depth_tasks(resnet)
    fused = MultiTaskModel(resnet, tasks)
    separate = sum(weight_bytes(TaskModel.from_task(resnet, t)) for t in tasks)
    assert weight_bytes(fused) == size_of(fused).bytes < separate
    counters = sum(b.numel() * b.element_size() for _, b in fused.named_buffers() if not b.is_floating_point())
    assert counters > 0  # BatchNorm's num_batches_tracked, which no inference graph holds
    assert weight_bytes(fused, floating_only=True) == weight_bytes(fused) - counters
