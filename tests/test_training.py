import math
from dataclasses import replace

import pytest
import torch

from subtune_edge.backbone import create_backbone
from subtune_edge.data import DataSpec, load_data
from subtune_edge.errors import SubtuneError
from subtune_edge.multitask import MultiTaskModel, TaskModel
from subtune_edge.task import load_task, save_task
from subtune_edge.train import PrefixCache, TrainConfig, TrainStep, cosine_with_warmup, split_batches, train

from .helpers import backbone_for

SIZE = 32


def _data(backbone, target="parity", n=48, size=SIZE):
    return load_data(DataSpec(f"digits:{target}", (size, size), train_samples=n, val_samples=40),
                     backbone.data_config)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name,units", [("resnet18", ["layer3.1", "layer4.1"]),
                                        ("tf_efficientnet_lite0", ["blocks.5.3", "conv_head"])])
def test_subtuning_changes_only_the_chosen_units_and_the_head(name, units):
    backbone = backbone_for(name)
    before = _snapshot(backbone.model)
    result = train(backbone, _data(backbone), units, TrainConfig(epochs=1, batch_size=16, lr=1e-2),
                   name="parity")
    # the backbone itself, BatchNorm running statistics included, is bit-identical
    after = backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    task = result.task
    assert task.tuned_units == units
    assert {k.split(".")[0] for k in task.tensors if k.startswith("head.")} == {"head"}
    prefixes = {k[:len(u)] for k in task.tensors for u in units if k.startswith(u + ".")}
    assert prefixes == set(units)
    fresh = create_backbone(name, "random")
    model = TaskModel.from_task(fresh, task)
    for i, unit in enumerate(fresh.unit_names):
        state, pretrained = model.units[i].state_dict(), fresh.units[unit].state_dict()
        same = [torch.equal(state[k], pretrained[k]) for k in state]
        if unit in units:
            assert not all(same), f"tuned unit {unit} did not change"
            bn_stats = [k for k in state if k.endswith("running_mean")]
            assert any(not torch.equal(state[k], pretrained[k]) for k in bn_stats), "tuned BN stats move"
        else:
            assert all(same), f"frozen unit {unit} changed"
    assert result.record.mode == "subtune" and len(result.record.history) == 1


def test_frozen_units_stay_in_eval_and_only_the_branch_gets_gradients(resnet):
    model = TaskModel.for_training(resnet, ["layer4.1"], 2)
    model.train()
    assert not resnet.units["layer4.0"].training and not resnet.stem.training
    assert model.units[resnet.unit_index("layer4.1")].training and model.head.training
    cfg = TrainConfig(epochs=1).resolve(resnet, ["layer4.1"])
    step = TrainStep(model, cfg, total_steps=2)
    step(torch.randn(4, 3, SIZE, SIZE), torch.tensor([0, 1, 0, 1]))
    assert all(p.grad is None for p in resnet.model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())


def test_prefix_cache_gives_the_same_training_and_is_shared_between_runs(resnet):
    data = _data(resnet, n=40, size=16)  # the whole set (1,797 digits) goes through the prefix: keep it small
    cache = PrefixCache()
    cfg = TrainConfig(epochs=2, batch_size=16, augment=False, cache_whole_set=100)
    cached = train(resnet, data, ["layer4.1"], cfg, cache=cache)
    info = cached.record.prefix_cache
    assert info["train"] and info["val"] and info["val_reason"] == "computed for all 1797 images"
    assert info["train_reason"] == "reused" and len(cache) == 1  # one pass over all digits serves both splits
    train(resnet, data, ["layer4.0", "layer4.1"], cfg, cache=cache)
    assert len(cache) == 2  # another branch point
    other_task = _data(resnet, target="digit", n=60, size=16)  # same images, other targets and sample size
    reused = train(resnet, other_task, ["layer4.1"], replace(cfg, epochs=1), cache=cache)
    assert reused.record.prefix_cache["train_reason"] == "reused" and len(cache) == 2
    # by default a split much smaller than its dataset caches only itself
    fresh = PrefixCache()
    small = train(resnet, data, ["layer4.1"], TrainConfig(epochs=1, batch_size=16, augment=False), cache=fresh)
    assert small.record.prefix_cache["val_reason"] == "computed" and len(fresh) == 2
    # ... and uses the whole set's once it is there
    again = train(resnet, data, ["layer4.1"], TrainConfig(epochs=1, batch_size=16, augment=False), cache=cache)
    assert again.record.prefix_cache["val_reason"] == "reused" and len(cache) == 2
    plain = train(resnet, data, ["layer4.1"], TrainConfig(epochs=2, batch_size=16, augment=False,
                                                          prefix_cache=False))
    assert not plain.record.prefix_cache["train"]
    assert plain.accuracy == pytest.approx(cached.accuracy, abs=0.03)
    torch.testing.assert_close(plain.model.head.weight, cached.model.head.weight, atol=1e-4, rtol=1e-3)
    augmented = train(resnet, data, ["layer4.1"], TrainConfig(epochs=1, batch_size=16, augment=True), cache=cache)
    assert not augmented.record.prefix_cache["train"] and augmented.record.prefix_cache["val"]


def test_seeded_runs_repeat_and_other_seeds_differ(resnet):
    data = _data(resnet, n=40)
    a = train(resnet, data, ["layer4.1"], TrainConfig(epochs=1, batch_size=16, seed=3))
    b = train(resnet, data, ["layer4.1"], TrainConfig(epochs=1, batch_size=16, seed=3))
    c = train(resnet, data, ["layer4.1"], TrainConfig(epochs=1, batch_size=16, seed=4))
    assert torch.equal(a.task.tensors["head.weight"], b.task.tensors["head.weight"])
    assert not torch.equal(a.task.tensors["head.weight"], c.task.tensors["head.weight"])


def test_config_defaults_follow_the_paper(resnet):
    assert TrainConfig().resolve(resnet, ["layer4.1"]).lr == 1e-3
    assert TrainConfig().resolve(resnet, []).lr == 1e-2
    cfg = TrainConfig().resolve(resnet, ["layer4.1"])
    assert cfg.weight_decay == 1e-2 and cfg.device == "cpu" and not cfg.amp and cfg.batch_size == 32
    vit = backbone_for("vit_tiny_patch16_224")
    vit_cfg = TrainConfig().resolve(vit, ["blocks.11"])
    assert vit_cfg.lr == 1e-4 and vit_cfg.weight_decay == 5e-5
    assert TrainConfig(lr=0.5).resolve(resnet, []).lr == 0.5
    f = cosine_with_warmup(total_steps=100, warmup_steps=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5) and f(99) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    with pytest.raises(SubtuneError, match="no CUDA device"):
        TrainConfig(device="cuda").resolve(resnet, [])


def test_linear_probe_full_finetune_and_record(resnet):
    data = _data(resnet, target="ge5", n=40)
    probe = train(resnet, data, [], TrainConfig(epochs=2, batch_size=16))
    assert probe.task.tuned_units == [] and set(probe.task.tensors) == {"head.weight", "head.bias"}
    r = probe.record
    assert r.mode == "linear-probe" and len(r.history) == 2 and r.samples == 40
    assert 0 <= r.val_accuracy <= r.best_val_accuracy <= 1
    assert probe.task.labels == ["<5", ">=5"] and probe.task.preprocessing["input_size"] == (3, SIZE, SIZE)
    full = train(resnet, data, resnet.unit_names, TrainConfig(epochs=1, batch_size=16))
    assert full.record.mode == "full-finetune" and full.task.tuned_units == resnet.unit_names
    with pytest.raises(SubtuneError, match="Siamese SubTuning needs at least one tuned unit"):
        train(resnet, data, [], siamese=True)
    with pytest.raises(SubtuneError, match="has no unit 'layer9.0'"):
        train(resnet, data, ["layer9.0"])


@pytest.mark.parametrize("name", ["resnet18", "tf_efficientnet_lite0"])
def test_siamese_and_linear_probe_tasks_export_through_the_fused_module(tmp_path, name):
    backbone = backbone_for(name)
    data = _data(backbone, n=32)
    last = backbone.unit_names[-1]
    cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-2)
    trained = [train(backbone, data, [last], cfg, siamese=True, name="siam"),
               train(backbone, data, [], cfg, name="probe"),
               train(backbone, _data(backbone, "digit", n=30), [backbone.unit_names[-2]], cfg, name="digit")]
    assert trained[0].record.mode == "siamese" and trained[0].task.siamese
    assert trained[0].task.head_in_features == 2 * backbone.num_features
    tasks = [load_task(save_task(r.task, tmp_path / r.task.name)) for r in trained]
    fused = MultiTaskModel(backbone, tasks)
    x = torch.stack([data.val_set()[i][0] for i in range(4)])
    with torch.no_grad():
        outputs = fused(x)
        for r, task, out in zip(trained, tasks, outputs):
            torch.testing.assert_close(out, TaskModel.from_task(backbone, task)(x), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out, r.model.eval()(x), atol=1e-5, rtol=1e-5)


def test_batches_cover_every_sample_once_and_never_leave_one_alone():
    for n, bs in ((33, 16), (32, 16), (17, 16), (5, 16), (1, 16)):
        batches = split_batches(n, bs, torch.Generator().manual_seed(n))
        assert sorted(torch.cat(batches).tolist()) == list(range(n))
        assert n == 1 or min(len(b) for b in batches) > 1
        assert max(len(b) for b in batches) <= bs + 1
