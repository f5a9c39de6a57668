import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data as skdata
from timm.data import create_transform

from subtune_edge.backbone import create_backbone
from subtune_edge.errors import WeightsError
from subtune_edge.weights import create_model

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("tf_efficientnet_lite0", "offline")


def _classify(backbone, image: np.ndarray) -> int:
    cfg = backbone.data_config
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    x = create_transform(**cfg)(Image.fromarray(image)).unsqueeze(0)
    with torch.no_grad():
        return int(backbone.model(x).argmax())


def test_offline_lite0_recognises_a_cat_and_an_espresso(lite0):
    assert _classify(lite0, skdata.chelsea()) in CAT_CLASSES
    assert _classify(lite0, skdata.coffee()) == ESPRESSO


def test_offline_weights_load_strictly_and_recompose_exactly(lite0):
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(lite0.forward(x), lite0.model(x))


def test_offline_weights_for_other_models_are_refused():
    with pytest.raises(WeightsError, match="no offline weights for 'resnet18'"):
        create_model("resnet18", "offline")


def test_local_state_dict_and_safetensors_give_the_same_fingerprint(tmp_path):
    ref = create_backbone("resnet18", "random")
    state = ref.model.state_dict()
    torch.save(state, tmp_path / "w.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    assert create_backbone("resnet18", str(tmp_path / "w.pth")).fingerprint == ref.fingerprint
    assert create_backbone("resnet18", str(tmp_path / "w.safetensors")).fingerprint == ref.fingerprint


def test_bad_weight_files_are_refused(tmp_path):
    with pytest.raises(WeightsError, match="neither a file nor one of timm, random, offline"):
        create_model("resnet18", str(tmp_path / "missing.pth"))
    torch.save(timm.create_model("resnet34").state_dict(), tmp_path / "r34.pth")
    with pytest.raises(WeightsError, match="does not fit 'resnet18'"):
        create_model("resnet18", str(tmp_path / "r34.pth"))
    good = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}, str(good))
    good.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="corrupt or truncated"):
        create_model("resnet18", str(good))
