"""Batch norms folded for inference: same function, and the caller's model is left as it was."""

import numpy as np
import pytest
import torch
from torch import nn

from llb.config import get_config
from llb.inference import session as session_module
from llb.inference.crop import CropConfig
from llb.inference.fold import conv_bn_pairs
from llb.inference.memory import MemoryConfig
from llb.inference.session import AUTOCAST, FOLDED, InferenceConfig, Segmenter, inference_network
from llb.network import LLBNet

CPU = torch.device("cpu")


def _batch_norms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def _model(config: str, variant: str = "llb") -> LLBNet:
    """A network whose batch norms have non-trivial statistics and affine terms, so that folding shows."""
    torch.manual_seed(0)
    model = LLBNet(get_config(config, variant))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()


def _probs(seg: Segmenter, n: int) -> list[np.ndarray]:
    """The session's merged probabilities over n random 96x128 frames from a box mask on frame 0."""
    frames = np.random.default_rng(0).integers(0, 255, (n, 96, 128, 3), dtype=np.uint8)
    first = np.zeros((96, 128), np.uint8)
    first[30:60, 40:80] = 1
    session = seg.start(list(frames))
    session.add_mask(0, first)
    return [r.probs for r in session.propagate()]


@pytest.mark.parametrize(("config", "variant"), [("lite", "llb"), ("paper", "llb"), ("lite", "joint")])
def test_folded_network_computes_the_same_features_logits_and_labels(config, variant):
    model = _model(config, variant)
    net = inference_network(model, CPU)
    assert {name: _batch_norms(getattr(net, name)) for name in FOLDED} == dict.fromkeys(FOLDED, 0)
    torch.manual_seed(1)
    image, mask = torch.randn(2, 3, 96, 160), torch.rand(2, 1, 96, 160)
    with torch.no_grad():
        layers, folded_layers = model.backbone(image), net.backbone(image)
        for name in layers:
            _close(layers[name], folded_layers[name])
        e_tar = torch.randn(2, model.cfg.label.dim, 6, 10)
        _close(model.decoder(e_tar, layers, (96, 160)), net.decoder(e_tar, layers, (96, 160)))
        labels, folded_labels = model.encode_label(image, mask), net.encode_label(image, mask)
        for field in ("e1", "e2", "weight"):
            _close(getattr(labels, field), getattr(folded_labels, field))


def test_every_batch_norm_of_the_folded_parts_has_its_convolution():
    """The lite EfficientNet-Lite2 has 63 conv + batch norm pairs; none is left unfolded in any part."""
    for config in ("lite", "paper"):
        model = LLBNet(get_config(config, "llb"))
        for name in FOLDED:
            part = getattr(model, name)
            assert len(conv_bn_pairs(part)) == _batch_norms(part) > 0
    assert len(conv_bn_pairs(LLBNet(get_config("lite", "llb")).backbone)) == 63


def test_segmenter_leaves_the_callers_model_as_it_was():
    """A model in training handed to a Segmenter (as the validator does) keeps its batch norms, mode and
    weights, and the session's masks are the ones the unfolded network gives."""
    model = _model("lite").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bns = _batch_norms(model)
    cfg = InferenceConfig(crop=CropConfig(size=(64, 112)), init_iters=3, update_iters=1, autocast=False)
    folded = _probs(Segmenter(model, cfg, device="cpu"), 6)
    assert model.training and _batch_norms(model) == bns
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)

    unfolded = Segmenter(_model("lite"), cfg, device="cpu")
    unfolded.model = _model("lite")  # the network as it was before folding
    for a, b in zip(folded, _probs(unfolded, 6), strict=True):
        assert np.abs(a - b).max() < 1e-4


def test_copy_false_folds_the_given_model_itself():
    model = _model("lite")
    assert Segmenter(model, device="cpu", copy=False).model is model
    assert all(_batch_norms(getattr(model, name)) == 0 for name in FOLDED)


@pytest.mark.parametrize("config", ["lite", "paper"])
def test_weights_kept_in_bf16_give_the_same_bits_as_autocast_casting_them(config, monkeypatch):
    """Where bf16 autocast is on, the parts that run under it keep bf16 weights: the session's probabilities are
    bit for bit those of the float32 weights cast at each call."""
    monkeypatch.setattr(session_module, "native_bf16", lambda device: True)
    model = _model(config)
    cfg = InferenceConfig(
        crop=CropConfig(size=(64, 112)), init_iters=3, update_iters=1, memory=MemoryConfig(interval=2)
    )
    cast = Segmenter(model, cfg, device="cpu")
    dtypes = {p.dtype for name in AUTOCAST for p in getattr(cast.model, name).parameters()}
    assert torch.bfloat16 in dtypes and cast.model.decoder.project_conv2.weight.dtype == torch.float32
    assert cast.model.learner.filter_reg.dtype == torch.float32  # the learner fits in float32
    plain = Segmenter(model, cfg, device="cpu")
    plain.model = inference_network(model, CPU)
    for a, b in zip(_probs(cast, 5), _probs(plain, 5), strict=True):
        assert np.array_equal(a, b)
