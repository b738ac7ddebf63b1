"""Segmentation decoder D (LWL): refines the fused target encoding with backbone features up to full resolution.

Levels run layer4 -> layer1. At each level a target segmentation encoder (TSE) mixes the backbone feature
with the resized E_tar, then a residual refinement block (RRB), a channel attention block (CAB) that brings in
the previous level, and a second RRB. A final projection upsamples x2, then to the image size, to one logit map.

Both upsamplings are exact x2 steps at the usual crop sizes; they run as a fixed depthwise convolution
(`upsample2x`), which gives F.interpolate's result (align_corners=False) in a fraction of its CPU time. The
last one and the 3x3 conv to one logit map run fused (`upsample2x_conv3x3`): the full-size project_dim-channel
map is never built.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DecoderConfig

LEVELS = ("layer4", "layer3", "layer2", "layer1")


def conv(cin: int, cout: int, k: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)


def resize(x: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def _cubic(t: float, a: float = -0.75) -> float:
    """Keys' cubic convolution weight at distance t, with torch's a = -0.75."""
    t = abs(t)
    if t <= 1:
        return ((a + 2) * t - (a + 3)) * t * t + 1
    return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a if t < 2 else 0.0


# Per mode, the weights of input taps i-2..i+2 for output 2i (sampled at i - 1/4) and 2i+1 (at i + 1/4).
_PHASE_TAPS = {
    "bicubic": (
        (_cubic(1.75), _cubic(0.75), _cubic(0.25), _cubic(1.25), 0.0),
        (0.0, *map(_cubic, (1.25, 0.25, 0.75, 1.75))),
    ),
    "bilinear": ((0.0, 0.25, 0.75, 0.0, 0.0), (0.0, 0.0, 0.75, 0.25, 0.0)),
}


def upsample2x(x: Tensor, mode: str) -> Tensor:
    """F.interpolate(x, scale 2, mode, align_corners=False) for (B, C, H, W) -> (B, C, 2H, 2W), as one depthwise
    5x5 convolution giving the four output phases (B, 4C, H, W) and a pixel shuffle; channels-last, the layout
    in which both run fastest on the CPU. torch clamps the taps to the image, which the replicate padding
    repeats. Bilinear is F.interpolate itself: its channels-last kernel is ~20x faster than the convolution
    (1.0 vs 22 ms for 64 x 60 x 108 in bf16, 1 thread), unlike bicubic's (81 vs 23 ms)."""
    x = x.contiguous(memory_format=torch.channels_last)
    if mode == "bilinear":
        return F.interpolate(x, scale_factor=2, mode=mode, align_corners=False)
    taps = torch.tensor(_PHASE_TAPS[mode], dtype=torch.float32, device=x.device)  # (2, 5)
    phases = (taps[:, None, :, None] * taps[None, :, None, :]).reshape(4, 1, 5, 5)  # (dy, dx) row-major
    x = F.pad(x, (2, 2, 2, 2), mode="replicate")
    weight = phases.repeat(x.shape[1], 1, 1, 1).to(x.dtype)
    return F.pixel_shuffle(F.conv2d(x, weight, groups=x.shape[1]), 2)


def _conv_phase_taps(mode: str) -> tuple[tuple[tuple[float, ...], ...], ...]:
    """(2, 3, 5): per output phase p and 3x3 conv tap k (offset k - 1), the weights of input taps i-2..i+2 of the
    x2 upsampling read through that conv tap. The upsampled row 2i+p+k-1 is phase q = (p+k-1) mod 2 of input
    row i + (p+k-1) // 2, so its 5 taps shift by that row; they stay within i-2..i+2 (a phase's tap at the far
    end is 0, which the assert checks)."""
    out = []
    for p in range(2):
        row = []
        for k in range(3):
            shift, q = divmod(p + k - 1, 2)
            taps = [0.0] * 7  # offsets -3..3
            taps[1 + shift : 6 + shift] = _PHASE_TAPS[mode][q]
            assert taps[0] == taps[6] == 0.0
            row.append(tuple(taps[1:6]))
        out.append(tuple(row))
    return tuple(out)


_CONV_PHASE_TAPS = {mode: _conv_phase_taps(mode) for mode in _PHASE_TAPS}


def upsample2x_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None, mode: str) -> Tensor:
    """F.conv2d(upsample2x(x, mode), weight, bias, padding=1) for x (B, C, h, w), weight (O, C, 3, 3) ->
    (B, O, 2h, 2w), without building the (B, C, 2h, 2w) map: both are linear, so output phase (dy, dx) is one
    5x5 convolution of x whose weights are the 3x3 weights spread over the upsampling taps; the O x 4 phases
    run as one convolution on x and a pixel shuffle.

    That convolution zero-pads x where the upsampling clamps its taps, and cannot see the 3x3 conv's zero
    padding of the upsampled map: the outermost 4 output rows and columns (2 input rows) are recomputed the
    direct way (`_edge_rows`), on the first and last 4 input rows (columns) only."""
    taps = torch.tensor(_CONV_PHASE_TAPS[mode], dtype=weight.dtype, device=weight.device)  # (2, 3, 5)
    with torch.autocast(weight.device.type, enabled=False):  # the weights in their own precision, rounded once
        phases = torch.einsum("ocyx,pya,qxb->opqcab", weight, taps, taps).flatten(0, 2)  # (O*4, C, 5, 5)
    x = x.contiguous(memory_format=torch.channels_last)
    out = F.pixel_shuffle(F.conv2d(x, phases, None if bias is None else bias.repeat_interleave(4), padding=2), 2)
    out[..., :4, :], out[..., -4:, :] = _edge_rows(x, weight, bias, mode)
    left, right = _edge_rows(x.transpose(-1, -2), weight.transpose(-1, -2), bias, mode)
    out[..., :4], out[..., -4:] = left.transpose(-1, -2), right.transpose(-1, -2)
    return out


def _edge_rows(x: Tensor, weight: Tensor, bias: Tensor | None, mode: str) -> tuple[Tensor, Tensor]:
    """The first and last 4 rows, (B, O, 4, 2w) each, of F.conv2d(upsample2x(x), weight, bias, padding=1), from
    x's first and last 4 rows (as one batch): they hold every input of the upsampled rows 0..4 (resp. the last 5),
    which those output rows read."""
    n = x.shape[0]
    y = F.conv2d(upsample2x(torch.cat([x[..., :4, :], x[..., -4:, :]]), mode), weight, bias, padding=1)
    return y[:n, :, :4], y[n:, :, -4:]


def upsample(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """x (B, C, h, w) -> (B, C, *size) like F.interpolate(align_corners=False); exact x2 steps by `upsample2x`."""
    if tuple(size) == (2 * x.shape[-2], 2 * x.shape[-1]):
        return upsample2x(x, mode)
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


class TargetSegmentationEncoder(nn.Module):
    """f = reduce(feature); h = three (3x3 conv + ReLU) on concat[f, E_tar resized]. Returns (h, f)."""

    def __init__(self, feat_dim: int, target_dim: int, width: int) -> None:
        super().__init__()
        self.reduce = nn.Sequential(conv(feat_dim, width, 1), nn.ReLU(inplace=True), conv(width, width, 1))
        nc = width + target_dim
        self.transform = nn.Sequential(
            conv(nc, nc, 3),
            nn.ReLU(inplace=True),
            conv(nc, nc, 3),
            nn.ReLU(inplace=True),
            conv(nc, width, 3),
            nn.ReLU(inplace=True),
        )

    def forward(self, feat: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        f = self.reduce(feat)
        target = resize(target, f.shape[-2:])
        return self.transform(torch.cat([f, target], dim=1)), f


class ResidualRefinement(nn.Module):
    """RRB: u = conv1x1(x); relu(u + conv3x3(relu(bn(conv3x3(u)))))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1x1 = conv(width, width, 1)
        self.bblock = nn.Sequential(
            conv(width, width, 3),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            conv(width, width, 3, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        u = self.conv1x1(x)
        return torch.relu(u + self.bblock(u))


class ChannelAttention(nn.Module):
    """CAB: h . sigmoid(MLP(concat[mean h, mean prev])) + prev resized to h."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(conv(2 * width, width, 1), nn.ReLU(inplace=True), conv(width, width, 1))

    def forward(self, h: Tensor, prev: Tensor) -> Tensor:
        pooled = torch.cat([h.mean(dim=(2, 3), keepdim=True), prev.mean(dim=(2, 3), keepdim=True)], dim=1)
        return h * torch.sigmoid(self.mlp(pooled)) + resize(prev, h.shape[-2:])


class DecoderLevel(nn.Module):
    """One level: TSE, RRB, CAB, RRB."""

    def __init__(self, feat_dim: int, target_dim: int, width: int) -> None:
        super().__init__()
        self.tse = TargetSegmentationEncoder(feat_dim, target_dim, width)
        self.rrb1 = ResidualRefinement(width)
        self.cab = ChannelAttention(width)
        self.rrb2 = ResidualRefinement(width)

    def forward(self, feat: Tensor, target: Tensor, prev: Tensor | None) -> Tensor:
        h, f = self.tse(feat, target)
        h = self.rrb1(h)
        if prev is None:  # coarsest level: the pooled reduced feature, as a constant map
            prev = f.mean(dim=(2, 3), keepdim=True)
        return self.rrb2(self.cab(h, prev))


class SegmentationDecoder(nn.Module):
    """E_tar (B, D, h, w) + backbone features {layer1..4} -> logits (B, 1, H, W)."""

    def __init__(self, cfg: DecoderConfig, target_dim: int, feat_dims: dict[str, int]) -> None:
        super().__init__()
        self.cfg = cfg
        widths = dict(zip(LEVELS, cfg.widths, strict=True))
        self.levels = nn.ModuleDict({name: DecoderLevel(feat_dims[name], target_dim, widths[name]) for name in LEVELS})
        self.proj = nn.ModuleDict(
            {
                cur: nn.Sequential(conv(widths[prev], widths[cur], 1), nn.ReLU(inplace=True))
                for prev, cur in itertools.pairwise(LEVELS)
            }
        )
        last = widths[LEVELS[-1]]
        self.project_conv1 = conv(last, cfg.project_dim, 3)
        self.project_conv2 = conv(cfg.project_dim, 1, 3)

    def forward(self, target: Tensor, feats: dict[str, Tensor], image_size: tuple[int, int]) -> Tensor:
        out: Tensor | None = None
        for name in LEVELS:
            prev = None if out is None else self.proj[name](out)
            out = self.levels[name](feats[name], target, prev)
        assert out is not None
        mode = self.cfg.upsample
        x = torch.relu(self.project_conv1(upsample2x(out, mode)))
        if tuple(image_size) == (2 * x.shape[-2], 2 * x.shape[-1]):
            return upsample2x_conv3x3(x, self.project_conv2.weight, self.project_conv2.bias, mode)
        return self.project_conv2(upsample(x, image_size, mode))
