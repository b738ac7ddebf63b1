"""ViTAE-6M ("ViTAE_basic_6M"), the transformer label backbone of LLB's label generator.

It turns the background-filtered frame (normalised image times mask) into a stride-16, 256-channel map:

- stage 1: reduction cell, stride 4, 64 channels: four dilated 7x7 convs (pyramid reduction, PRM) feed a
  Performer token attention, plus a parallel conv branch (PCM);
- stage 2: reduction cell, stride 2, the same with three dilated 3x3 convs;
- stage 3: stride 2, only two dilated 3x3 convs concatenated to 256 channels, then 10 normal cells (multi-head
  self-attention plus a grouped conv branch, then an MLP).

Module names follow the official code (ViTAE-Transformer/VOS-LLB), so its `label_encoder.label_backbone.*`
weights load with `strict=True` once the prefix and the unused classifier `head.*` are removed. Token grids
are row-major over (h, w) and need not be square; inputs must have H and W divisible by 16.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def tokens_to_map(tokens: Tensor, h: int, w: int) -> Tensor:
    """(B, h*w, C) row-major tokens -> (B, C, h, w) feature map."""
    b, _, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, h, w)


def map_to_tokens(x: Tensor) -> Tensor:
    """(B, C, h, w) feature map -> (B, h*w, C) row-major tokens."""
    return x.flatten(2).transpose(1, 2)


class PyramidReduction(nn.Module):
    """PRM: parallel dilated strided convs (each + GELU), concatenated along channels.

    Several dilations give every token a multi-scale receptive field. Padding is ceil(((k-1)d + 1 - s) / 2),
    so all branches give the same (H/s, W/s) grid. (B, C_in, H, W) -> (B, len(dilations)*C_out, H/s, W/s).
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int, stride: int, dilations: Sequence[int]):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(
                    in_chans,
                    out_chans,
                    kernel_size,
                    stride=stride,
                    padding=math.ceil(((kernel_size - 1) * d + 1 - stride) / 2),
                    dilation=d,
                ),
                nn.GELU(),
            )
            for d in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([conv(x) for conv in self.convs], dim=1)


class TokenPerformer(nn.Module):
    """Single-head Performer (linear attention with positive random features) of a reduction cell.

    softmax(q k^T) is approximated by phi(q) phi(k)^T with phi(x) = exp(w x - |x|^2 / 2) / sqrt(m), where `w`
    (m x dim) are fixed random features, stored with the weights and never redrawn. The value tokens are the
    skip connection, as in T2T-ViT; the reduction cell's conv branch is added before the MLP.
    """

    eps = 1e-8  # keeps the normaliser away from zero

    def __init__(self, in_dim: int, dim: int, kernel_ratio: float = 0.5):
        super().__init__()
        self.dim = dim
        num_features = int(dim * kernel_ratio)
        features = nn.init.orthogonal_(torch.empty(num_features, dim)) * math.sqrt(num_features)
        self.register_buffer("w", features)
        self.kqv = nn.Linear(in_dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(in_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def features(self, x: Tensor) -> Tensor:
        """Positive random features: (B, N, dim) -> (B, N, m)."""
        m = self.w.shape[0]
        return torch.exp(x @ self.w.t() - (x * x).sum(dim=-1, keepdim=True) / 2) / math.sqrt(m)

    def attention(self, x: Tensor) -> Tensor:
        """Linear attention with the value skip: (B, N, in_dim) -> (B, N, dim)."""
        k, q, v = torch.split(self.kqv(x), self.dim, dim=-1)  # official order: k, q, v
        kp, qp = self.features(k), self.features(q)  # (B, N, m)
        normaliser = qp @ kp.sum(dim=1).unsqueeze(-1)  # (B, N, 1)
        kv = v.transpose(1, 2) @ kp  # (B, dim, m)
        y = (qp @ kv.transpose(1, 2)) / (normaliser + self.eps)
        return v + self.proj(y)

    def forward(self, tokens: Tensor, conv_tokens: Tensor) -> Tensor:
        """tokens (B, N, in_dim) and the conv branch's conv_tokens (B, N, dim) -> (B, N, dim)."""
        x = self.attention(self.norm1(tokens)) + conv_tokens
        return x + self.mlp(self.norm2(x))


class ReductionCell(nn.Module):
    """Downsampling cell: PRM tokens, optionally refined by a Performer plus a parallel conv branch (PCM).

    With `performer=False` ("performer_less", ViTAE-6M's stage 3) the cell is the PRM alone.
    (B, C_in, H, W) -> (B, H/s * W/s, C) tokens, C = dim with the Performer, len(dilations)*embed_dim without.
    """

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        kernel_size: int,
        stride: int,
        dilations: Sequence[int],
        dim: int = 64,
        performer: bool = True,
    ):
        super().__init__()
        self.PCM: nn.Sequential | None = None
        self.attn: TokenPerformer | None = None
        if performer:
            # Conv strides (2, 2, 1) for stride 4 and (2, 1, 1) for stride 2: the branch matches the PRM grid.
            s1, s2 = (2, 2) if stride == 4 else (2, 1)
            self.PCM = nn.Sequential(
                nn.Conv2d(in_chans, embed_dim, 3, stride=s1, padding=1),
                nn.SiLU(),
                nn.Conv2d(embed_dim, embed_dim, 3, stride=s2, padding=1),
                nn.BatchNorm2d(embed_dim),
                nn.SiLU(),
                nn.Conv2d(embed_dim, dim, 3, padding=1),
                nn.SiLU(),
            )
        self.PRM = PyramidReduction(in_chans, embed_dim, kernel_size, stride, dilations)
        if performer:
            self.attn = TokenPerformer(embed_dim * len(dilations), dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        """x (B, C_in, H, W) -> (tokens (B, h*w, C), h, w)."""
        pyramid = self.PRM(x)
        h, w = pyramid.shape[-2:]
        tokens = map_to_tokens(pyramid)
        if self.attn is None or self.PCM is None:
            return tokens, h, w
        return self.attn(tokens, map_to_tokens(self.PCM(x))), h, w


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection: (B, N, dim) -> (B, N, dim)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim), (B, heads, N, head_dim)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Token MLP fc1 -> GELU -> fc2: (B, N, dim) -> (B, N, dim)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class NormalCell(nn.Module):
    """Transformer block with a parallel grouped-conv branch (PCM) that adds locality.

    x + attn(norm1(x)) + PCM(x), then + mlp(norm2(.)). (B, h*w, dim) -> (B, h*w, dim).
    """

    def __init__(self, dim: int = 256, num_heads: int = 4, mlp_ratio: float = 2.0, groups: int = 64):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)
        self.PCM = nn.Sequential(
            nn.Conv2d(dim, hidden, 3, padding=1, groups=groups),
            nn.BatchNorm2d(hidden),
            nn.SiLU(),
            nn.Conv2d(hidden, dim, 3, padding=1, groups=groups),
            nn.BatchNorm2d(dim),
            nn.SiLU(),
            nn.Conv2d(dim, dim, 3, padding=1, groups=groups),
            nn.SiLU(),
        )

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        conv = map_to_tokens(self.PCM(tokens_to_map(x, h, w)))
        x = x + self.attn(self.norm1(x)) + conv
        return x + self.mlp(self.norm2(x))


class Stage(nn.Module):
    """One reduction cell followed by `depth` normal cells (none in stages 1 and 2)."""

    def __init__(self, rc: ReductionCell, depth: int = 0, dim: int = 256):
        super().__init__()
        self.RC = rc
        self.NC = nn.ModuleList(NormalCell(dim) for _ in range(depth))

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        """x (B, C_in, H, W) -> (tokens (B, h*w, C), h, w)."""
        x, h, w = self.RC(x)
        for cell in self.NC:
            x = cell(x, h, w)
        return x, h, w


class ViTAE6M(nn.Module):
    """ViTAE_basic_6M features: (B, in_chans, H, W) -> (B, 256, H/16, W/16); H and W divisible by 16.

    The official classifier `head` is never used by LLB and is left out.
    """

    out_channels = 256
    stride = 16

    def __init__(self, in_chans: int = 3):
        super().__init__()
        self.layers = nn.ModuleList(
            [
                Stage(ReductionCell(in_chans, 64, kernel_size=7, stride=4, dilations=(1, 2, 3, 4))),
                Stage(ReductionCell(64, 64, kernel_size=3, stride=2, dilations=(1, 2, 3))),
                Stage(
                    ReductionCell(64, 128, kernel_size=3, stride=2, dilations=(1, 2), performer=False),
                    depth=10,
                    dim=self.out_channels,
                ),
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        if height % self.stride or width % self.stride:
            raise ValueError(f"ViTAE6M needs H and W divisible by {self.stride}, got {height}x{width}")
        for stage in self.layers:
            tokens, h, w = stage(x)
            x = tokens_to_map(tokens, h, w)
        return x
