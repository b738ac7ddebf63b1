"""Transduction branch: a one-layer, one-head transformer that propagates E1 from memory to the current frame.

Attn(q, k, v) = softmax(s * cos(WK q, WK k)) v, with queries and keys sharing one linear map WK, a fixed logit
scale s = 30 and values that are not projected (JOINT). The encoder refines the memory features
M_sa = IN(M + Attn(M, M, M)); the decoder applies the same self-attention block to the current features,
X_sa = IN(X + Attn(X, X, X)), then retrieves the target encoding E1* = Attn(X_sa, M_sa, E1).

Inference keeps the memory's encoding up to date with `IncrementalMemoryEncoder`, which computes what
`Transduction.encode_memory` computes, but only for the frames that joined or left the memory.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
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
        """Attention on projected unit-norm queries and keys: softmax(scale * q k^T) value.

        Fused (`scaled_dot_product_attention`) on GPUs. On the CPU, with values of another width than the keys,
        torch falls back to an unfused version that also scans the whole score matrix for masked rows, which
        the plain expression is spared.
        """
        if q.device.type == "cpu":
            return torch.softmax((q * self.scale) @ k.transpose(-1, -2), dim=-1) @ value
        return F.scaled_dot_product_attention(q, k, value, scale=self.scale)


def instance_norm(tokens: Tensor, frames: int, eps: float) -> Tensor:
    """Instance normalisation per frame and channel over the positions of that frame.

    tokens (B, frames * hw, C) -> same shape.
    """
    b, length, c = tokens.shape
    x = tokens.reshape(b, frames, length // frames, c)
    centred = x - x.mean(dim=2, keepdim=True)
    var = centred.square().mean(dim=2, keepdim=True)  # Tensor.var reduces this layout several times slower
    return (centred * (var + eps).rsqrt()).reshape(b, length, c)


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
        E1 (N, B, D, h, w), or its tokens (B, N*h*w, D) as `to_tokens` gives them (inference keeps them between
        memory updates) -> E1* (B, D, h, w)."""
        b, _, h, w = feat.shape
        query = self.cross_attn.project(self.self_attention_block(feat[None]))
        values = mem_e1 if mem_e1.dim() == 3 else to_tokens(mem_e1)
        e1 = self.cross_attn.attend(query, mem_keys, values)
        return e1.reshape(b, h, w, -1).permute(0, 3, 1, 2)


@dataclass
class _MemoryFrame:
    """A memory frame as the incremental encoder holds it: its features, tokens V (B, hw, C), self-attention
    projections q (B, hw, key_dim), and its tokens' softmax numerator (B, hw, C) and denominator (B, hw, 1),
    summed over the memory's frames in float64."""

    order: int
    feat: Tensor
    tokens: Tensor
    q: Tensor
    num: Tensor
    den: Tensor


class IncrementalMemoryEncoder:
    """`Transduction.encode_memory` of a memory that changes a few frames at a time, kept up to date at a
    fraction of the cost; equal to it up to float rounding.

    The memory's self-attention mixes every frame with every other, so one new frame changes every memory
    token's encoding, and encoding from scratch costs N^2 frame pairs. Per memory frame a, this keeps the
    softmax's numerator and denominator, the sums over frames b of exp(s q_a q_b^T - s) [V_b, 1], and when
    frames join or leave it adds or subtracts only their terms: N frame pairs per change. The constant -s stands
    in for the softmax's running maximum: the projections are unit vectors, so every term lies in (exp(-2s), 1]
    (no overflow, and no underflow for s < 40), and a token's own term is 1, so no denominator falls below 1. A
    pair's terms are computed the same way when they are added and when they are subtracted, and the sums are
    float64, so rounding does not build up over a long video.
    """

    def __init__(self, transduction: Transduction) -> None:
        self.transduction = transduction
        self.frames: list[_MemoryFrame] = []
        self._order = itertools.count()

    def update(self, feats: list[Tensor]) -> Tensor:
        """The memory's frames now, in memory order, each (B, C, h, w) -> cross-attention keys (B, N*h*w,
        key_dim), as `encode_memory(torch.stack(feats))` gives them. A frame is known by its tensor's identity:
        tensors seen before are kept, new ones join, and frames no longer listed leave."""
        with torch.autocast(feats[0].device.type, enabled=False):
            listed = {id(f) for f in feats}
            for gone in [m for m in self.frames if id(m.feat) not in listed]:
                self.frames.remove(gone)
                for m in self.frames:
                    if m.order < gone.order:
                        self._accumulate(m, self._weights(m, gone), gone.tokens, -1.0)
                    else:
                        self._accumulate(m, self._weights(gone, m).transpose(1, 2), gone.tokens, -1.0)
            known = {id(m.feat) for m in self.frames}
            for feat in feats:
                if id(feat) not in known:
                    self._add(feat)
            by_id = {id(m.feat): m for m in self.frames}
            return torch.cat([self._keys(by_id[id(f)]) for f in feats], dim=1)

    def _add(self, feat: Tensor) -> None:
        tokens = to_tokens(feat[None].float())
        new = _MemoryFrame(
            order=next(self._order),
            feat=feat,
            tokens=tokens,
            q=self.transduction.self_attn.project(tokens),
            num=tokens.new_zeros(tokens.shape, dtype=torch.float64),
            den=tokens.new_zeros((*tokens.shape[:2], 1), dtype=torch.float64),
        )
        for m in self.frames:
            weights = self._weights(m, new)
            self._accumulate(m, weights, new.tokens, 1.0)
            self._accumulate(new, weights.transpose(1, 2), m.tokens, 1.0)
        self._accumulate(new, self._weights(new, new), new.tokens, 1.0)
        self.frames.append(new)

    def _weights(self, first: _MemoryFrame, second: _MemoryFrame) -> Tensor:
        """exp(s q_first q_second^T - s), (B, hw, hw); always called with the older frame first."""
        scale = self.transduction.cfg.scale
        return torch.exp(scale * (first.q @ second.q.transpose(1, 2)) - scale)

    @staticmethod
    def _accumulate(target: _MemoryFrame, weights: Tensor, tokens: Tensor, sign: float) -> None:
        """Add sign * (weights V, weights 1) to the target's numerator and denominator."""
        target.num.add_(weights @ tokens, alpha=sign)
        target.den.add_(weights.sum(dim=2, keepdim=True), alpha=sign)

    def _keys(self, m: _MemoryFrame) -> Tensor:
        """IN(V + numerator / denominator) of one frame, projected to cross-attention keys (B, hw, key_dim);
        frame by frame, so that each step works on data the CPU caches hold."""
        attended = (m.num / m.den).to(m.tokens.dtype)
        refined = instance_norm(m.tokens + attended, 1, self.transduction.cfg.norm_eps)
        return self.transduction.cross_attn.project(refined)
