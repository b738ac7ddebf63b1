"""Transduction branch: a one-layer, one-head transformer that propagates E1 from memory to the current frame.

Attn(q, k, v) = softmax(s * cos(WK q, WK k)) v, with queries and keys sharing one linear map WK, a fixed logit
scale s = 30 and values that are not projected (JOINT). The encoder refines the memory features
M_sa = IN(M + Attn(M, M, M)); the decoder applies the same self-attention block to the current features,
X_sa = IN(X + Attn(X, X, X)), then retrieves the target encoding E1* = Attn(X_sa, M_sa, E1).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .config import TransductionConfig


class CosineAttention(nn.Module):
    """Single-head attention on L2-normalised shared query/key projections, value passed through."""

    def __init__(self, feature_dim: int, key_dim: int, scale: float) -> None:
        super().__init__()
        self.key = nn.Linear(feature_dim, key_dim)
        self.scale = scale

    def project(self, tokens: Tensor) -> Tensor:
        """(B, L, C) -> unit-norm keys (B, L, key_dim)."""
        return F.normalize(self.key(tokens), dim=-1)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        """query (B, Lq, C), key (B, Lk, C), value (B, Lk, Dv) -> (B, Lq, Dv)."""
        return self.attend(self.project(query), self.project(key), value)

    def attend(self, q: Tensor, k: Tensor, value: Tensor) -> Tensor:
        """Attention on projected unit-norm queries and keys: softmax(scale * q k^T) value."""
        return F.scaled_dot_product_attention(q, k, value, scale=self.scale)


def instance_norm(tokens: Tensor, frames: int, eps: float) -> Tensor:
    """Instance normalisation per frame and channel over the positions of that frame.

    tokens (B, frames * hw, C) -> same shape.
    """
    b, length, c = tokens.shape
    x = tokens.reshape(b, frames, length // frames, c)
    mean = x.mean(dim=2, keepdim=True)
    var = x.var(dim=2, keepdim=True, unbiased=False)
    return ((x - mean) * (var + eps).rsqrt()).reshape(b, length, c)


def to_tokens(feat: Tensor) -> Tensor:
    """Features of N frames (N, B, C, h, w) -> tokens (B, N*h*w, C), frame by frame, row-major."""
    n, b, c, h, w = feat.shape
    return feat.permute(1, 0, 3, 4, 2).reshape(b, n * h * w, c)


class Transduction(nn.Module):
    """Memory encoder and query decoder of the matching branch."""

    def __init__(self, cfg: TransductionConfig, feature_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.self_attn = CosineAttention(feature_dim, cfg.key_dim, cfg.scale)
        self.cross_attn = CosineAttention(feature_dim, cfg.key_dim, cfg.scale)

    def self_attention_block(self, feat: Tensor) -> Tensor:
        """IN(X + Attn(X, X, X)) over all tokens of N frames: (N, B, C, h, w) -> tokens (B, N*h*w, C)."""
        tokens = to_tokens(feat)
        q = self.self_attn.project(tokens)
        return instance_norm(tokens + self.self_attn.attend(q, q, tokens), feat.shape[0], self.cfg.norm_eps)

    def encode_memory(self, mem_feat: Tensor) -> Tensor:
        """Encoder: memory features (N, B, C, h, w) -> cross-attention keys (B, N*h*w, key_dim).

        The result only changes when the memory does, so inference caches it between updates.
        """
        return self.cross_attn.project(self.self_attention_block(mem_feat))

    def forward(self, feat: Tensor, mem_keys: Tensor, mem_e1: Tensor) -> Tensor:
        """Decoder: current features (B, C, h, w), encoded memory keys (B, N*h*w, key_dim) and the memory's
        E1 (N, B, D, h, w) -> E1* (B, D, h, w)."""
        b, _, h, w = feat.shape
        query = self.cross_attn.project(self.self_attention_block(feat[None]))
        e1 = self.cross_attn.attend(query, mem_keys, to_tokens(mem_e1))
        return e1.reshape(b, h, w, -1).permute(0, 3, 1, 2)
