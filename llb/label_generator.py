"""Label generator G: the DLGM of LLB, or JOINT's mask encoder.

The label input (the background-filtered frame, BFF = normalised frame x soft mask, or the mask alone) goes
through an encoder to stride 16, then two heads produce E1 (the transduction branch's values) and E2 (the
few-shot learner's labels); a third head on the induction projector gives the learner's per-pixel importance
weights W, initialised to 1. Encoders: ViTAE-6M (the paper's lightweight transformer), a pretrained
EfficientNet-Lite2 (the `lite` configuration), or JOINT's strided CNN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .backbone import efficientnet_lite_encoder
from .config import LabelConfig
from .vitae import ViTAE6M

CNN_DIMS = (16, 32, 64)  # JOINT's label encoder widths: stem, first and second residual block


@dataclass
class LabelEncoding:
    """Output of G for B label inputs: e1 (transduction value), e2 (learner label), weight W; (B, D, h, w)."""

    e1: Tensor
    e2: Tensor
    weight: Tensor


class CNNStem(nn.Module):
    """JOINT's first layers: 3x3 stride-2 conv + ReLU, 3x3 stride-2 max-pool; (B, Cin, H, W) -> (B, 16, H/4, W/4)."""

    out_channels = CNN_DIMS[0]

    def __init__(self, in_chans: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, CNN_DIMS[0], 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(torch.relu(self.conv(x)))


class ResidualDown(nn.Module):
    """Residual block without batch norm that halves the resolution; its shortcut is a strided 3x3 conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.downsample = nn.Conv2d(cin, cout, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.downsample(x))


class LabelHead(nn.Module):
    """One branch: projector to `hidden` channels at stride 16, then a 3x3 conv + ReLU to D channels."""

    def __init__(self, project: nn.Module, hidden: int, dim: int) -> None:
        super().__init__()
        self.project = project
        self.label = nn.Sequential(nn.Conv2d(hidden, dim, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder features -> (label (B, D, h, w), projector output (B, hidden, h, w))."""
        hidden = self.project(x)
        return self.label(hidden), hidden


def _encoder(cfg: LabelConfig) -> tuple[nn.Module, int]:
    in_chans = 3 if cfg.input == "bff" else 1
    if cfg.encoder == "transformer":
        return ViTAE6M(in_chans=in_chans), 256
    if cfg.encoder == "efficientnet":
        enc = efficientnet_lite_encoder(in_chans=in_chans, pretrained=cfg.pretrained)
        return enc, enc.out_channels
    if cfg.encoder == "cnn":
        return CNNStem(in_chans), CNNStem.out_channels
    raise ValueError(f"unknown label encoder {cfg.encoder!r}: choose cnn, transformer or efficientnet")


def _projector(cfg: LabelConfig, enc_dim: int) -> nn.Module:
    """CNN: two residual blocks take stride 4 to 16; the stride-16 encoders need one 3x3 conv + ReLU."""
    if cfg.encoder == "cnn":
        assert cfg.hidden == CNN_DIMS[2], "JOINT's residual label encoder ends at 64 channels"
        return nn.Sequential(ResidualDown(CNN_DIMS[0], CNN_DIMS[1]), ResidualDown(CNN_DIMS[1], CNN_DIMS[2]))
    return nn.Sequential(nn.Conv2d(enc_dim, cfg.hidden, 3, padding=1), nn.ReLU(inplace=True))


class LabelGenerator(nn.Module):
    """G: label input (B, 3 or 1, H, W) -> LabelEncoding with (B, D, H/16, W/16) maps."""

    def __init__(self, cfg: LabelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder, enc_dim = _encoder(cfg)
        self.induction_head = LabelHead(_projector(cfg, enc_dim), cfg.hidden, cfg.dim)
        self.transduction_head = LabelHead(_projector(cfg, enc_dim), cfg.hidden, cfg.dim)
        self.weight_head = nn.Conv2d(cfg.hidden, cfg.dim, 3, padding=1)
        nn.init.zeros_(self.weight_head.weight)
        nn.init.ones_(self.weight_head.bias)

    def label_input(self, image: Tensor, mask: Tensor) -> Tensor:
        """BFF = normalised image (B, 3, H, W) x soft mask (B, 1, H, W), or the mask alone (JOINT)."""
        return image * mask if self.cfg.input == "bff" else mask

    def forward(self, image: Tensor, mask: Tensor) -> LabelEncoding:
        feat = self.encoder(self.label_input(image, mask))
        e2, hidden = self.induction_head(feat)
        e1, _ = self.transduction_head(feat)
        return LabelEncoding(e1=e1, e2=e2, weight=self.weight_head(hidden))
