import pytest
import torch

from subtune_edge.backbone import create_backbone
from subtune_edge.errors import BackboneError

from .helpers import SIZE, backbone_for


def test_parts_in_sequence_reproduce_the_model_exactly(family_backbone):
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = family_backbone.model(x)
        got = family_backbone.forward(x)
    assert torch.equal(got, expected)
    assert got.shape == (2, 1000)
    assert family_backbone.forward_features(x).shape == (2, family_backbone.num_features)


def test_vit_average_pooling_is_reproduced():
    b = create_backbone("vit_tiny_patch16_224", "random", img_size=(SIZE, SIZE), global_pool="avg")
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(b.forward(x), b.model(x))


@pytest.mark.parametrize("name,first,last,count", [
    ("resnet18", "layer1.0", "layer4.1", 8),
    ("tf_efficientnet_lite0", "blocks.0.0", "conv_head", 17),
    ("mobilenetv3_large_100", "blocks.0.0", "conv_head", 17),
    ("convnext_atto", "stages.0.blocks.0", "stages.3.blocks.1", 15),
    ("vit_tiny_patch16_224", "blocks.0", "blocks.11", 12),
])
def test_unit_names_follow_the_model(name, first, last, count):
    b = backbone_for(name)
    assert (b.unit_names[0], b.unit_names[-1], len(b.unit_names)) == (first, last, count)


def test_convnext_downsamples_are_units():
    names = backbone_for("convnext_atto").unit_names
    assert [n for n in names if n.endswith("downsample")] == [f"stages.{i}.downsample" for i in (1, 2, 3)]


def test_frozen_parts_share_the_models_weights(resnet):
    assert resnet.units["layer4.1"] is resnet.model.layer4[1]
    assert all(not p.requires_grad for p in resnet.model.parameters())


def test_parse_units_accepts_stages_lists_and_keywords(resnet):
    assert resnet.parse_units("layer4") == ["layer4.0", "layer4.1"]
    assert resnet.parse_units("layer4.1, layer1.0") == ["layer1.0", "layer4.1"]
    assert resnet.parse_units("none") == []
    assert resnet.parse_units("all") == resnet.unit_names
    with pytest.raises(BackboneError, match="has no unit 'layer9'.*layer1.0"):
        resnet.parse_units("layer9")
    resnet.check_units(["layer1.0", "layer4.1"])
    with pytest.raises(BackboneError, match="'resnet18' has no unit 'layer4.7'; its units are layer1.0"):
        resnet.check_units(["layer1.0", "layer4.7"])


def test_unknown_model_is_refused_with_a_hint():
    with pytest.raises(BackboneError, match="unknown backbone 'resnet_999'"):
        create_backbone("resnet_999", "random")


def test_unsupported_family_lists_the_supported_ones():
    with pytest.raises(BackboneError, match="cannot split.*supported families: resnet .*convnext"):
        create_backbone("vgg11", "random")


def test_random_weights_are_the_same_in_every_process():
    a = create_backbone("resnet18", "random")
    b = create_backbone("resnet18", "random")
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint == backbone_for("resnet18").fingerprint  # input size does not change resnet weights


def test_fingerprint_changes_with_any_frozen_weight():
    b = create_backbone("resnet18", "random")
    before = b.fingerprint
    del b.__dict__["fingerprint"]
    with torch.no_grad():
        b.units["layer2.0"].conv1.weight[0, 0, 0, 0] += 1e-3
    assert b.fingerprint != before
