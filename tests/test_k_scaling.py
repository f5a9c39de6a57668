"""The k-scaling sweep's settings and the suites' trained-like weights (bn_init)."""

import pytest
import torch

from subtune_edge.bench import k_scaling, suites

pytestmark = pytest.mark.slow


def test_suites_build_trained_like_weights(tmp_path, monkeypatch):
    """bn_init = "trained-like": no BatchNorm scale is zero, so folded convolutions cannot be all zeros."""
    monkeypatch.setattr(suites, "WEIGHTS_CACHE", tmp_path)
    toml = tmp_path / "s.toml"
    toml.write_text('backbone = "resnet18"\nbn_init = "trained-like"\ninput_size = [32, 32]\nbatch_sizes = [1]\n'
                    'backends = ["ort-cpu"]\n[[tasks]]\nname = "a"\nunits = "layer4"\n')
    suite = suites.load_suite(str(toml))
    assert suite.bn_init == "trained-like" and suites.load_suite("k-scaling").bn_init == "trained-like"
    backbone, tasks = suites.build_suite_tasks(suite)
    assert backbone.spec.weights == str(tmp_path / "resnet18-32x32.safetensors")
    scales = [m.weight for m in backbone.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert scales and min(float(s.abs().min()) for s in scales) > 0.3
    toml.write_text(toml.read_text().replace("trained-like", "zeros"))
    with pytest.raises(Exception, match="bn_init"):
        suites.load_suite(str(toml))


def test_k_scaling_config_is_the_issue_sweep():
    cfg = k_scaling._config(quick=False)
    assert cfg["ks"] == [1, 2, 4, 8, 16] and cfg["batches"] == [1, 8] and cfg["threads"] == 2
    assert [(m["backbone"], m["units"]) for m in cfg["models"]] == [
        ("resnet50", "layer4"), ("tf_efficientnet_lite0", "blocks.6.0,conv_head")]
    assert cfg["max_k"] == {"resnet50": {"8": 8}}
