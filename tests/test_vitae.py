"""ViTAE-6M label backbone: official key layout, and parity with the official network on the LLB fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from llb.vitae import ViTAE6M

PREFIX = "label_encoder.label_backbone."
CAFFE_MEAN_BGR = (102.9801, 115.9465, 122.7717)


def is_backbone_key(key: str) -> bool:
    """An official ViTAE key that ViTAE6M holds: under PREFIX, except the unused classifier `head.*`."""
    return key.startswith(PREFIX) and not key.startswith(PREFIX + "head.")


def test_state_dict_matches_official_layout(official_dir: Path) -> None:
    import make_weights

    rows = make_weights.read_tsv(str(official_dir / "llb_state_dict.tsv"))
    official = {key[len(PREFIX) :]: shape for key, shape, _dtype, _kind in rows if is_backbone_key(key)}
    ours = {key: tuple(value.shape) for key, value in ViTAE6M().state_dict().items()}
    assert ours == official


@pytest.fixture(scope="module")
def loaded(official_dir: Path) -> ViTAE6M:
    """ViTAE6M with the fixture's rule-built weights, strictly loaded, in eval mode."""
    import make_weights

    sd = make_weights.build_state_dict(str(official_dir / "llb_state_dict.tsv"))
    net = ViTAE6M()
    net.load_state_dict({k[len(PREFIX) :]: v for k, v in sd.items() if is_backbone_key(k)}, strict=True)
    return net.eval()


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """The fixture's metric: max|ours - ref| / max|ref|."""
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def test_parity_with_official_on_train_frame(official_dir: Path, loaded: ViTAE6M) -> None:
    fx = np.load(official_dir / "fixture_llb.npz")
    assert json.loads(str(fx["meta_json"]))["which"] == "llb"
    bgr = fx["frames_rgb"][0][..., ::-1].astype(np.float32) - np.asarray(CAFFE_MEAN_BGR, np.float32)
    image = torch.from_numpy(np.ascontiguousarray(bgr)).permute(2, 0, 1)[None]  # (1, 3, H, W)
    x = image * torch.from_numpy(fx["masks"][0].astype(np.float32))

    with torch.no_grad():
        feat = loaded(x)
    assert feat.shape == (1, 256, x.shape[-2] // 16, x.shape[-1] // 16)

    full = feat[0].double().numpy()  # (256, h, w); row 0 of the fixture is the train frame
    step = full.shape[0] // fx["dlgm_feat"].shape[1]
    checks = {
        "dlgm_feat": (full[::step], fx["dlgm_feat"][0]),
        "dlgm_feat__chabs": (np.abs(full).mean(axis=(1, 2)), fx["dlgm_feat__chabs"][0]),
        "dlgm_feat__pixrms": (np.sqrt((full**2).mean(axis=0)), fx["dlgm_feat__pixrms"][0]),
    }
    for name, (ours, ref) in checks.items():
        assert ours.shape == ref.shape, name
        err = rel_err(ours, ref.astype(np.float64))
        assert err <= 1e-4, f"{name}: relative error {err:.3g}"


def test_non_square_sizes() -> None:
    net = ViTAE6M().eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 48, 80)).shape == (2, 256, 3, 5)
    with pytest.raises(ValueError):
        net(torch.randn(1, 3, 40, 64))
