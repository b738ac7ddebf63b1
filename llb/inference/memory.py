"""The memory policy: which frames join the memory, which slot they take, and how much each counts.

`paper`: the first frame, then every `interval`-th frame (T = 5), at most `size` (20) entries; when full, the
oldest entry after the first frame is dropped; all entries count equally.
`weighted` (the official tracker): a sample every `interval`-th frame (3 on DAVIS), each new sample weighs
`learning_rate` of the total while older ones decay, the first frame keeps at least `first_min_weight` of the
total, and a full memory replaces its lowest-weight entry after the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor


@dataclass
class MemoryConfig:
    policy: Literal["paper", "weighted"] = "paper"
    interval: int = 5
    size: int = 20
    learning_rate: float = 0.1
    first_min_weight: float = 0.25


@dataclass
class MemoryEntry:
    """One memory frame for B targets: learner and transduction features (B, C, h, w), E1, E2, W (B, D, h, w),
    and the output of the group's last fitted target model on it (kept by the fit, see `inference.fit`)."""

    frame: int
    learner: Tensor
    transduction: Tensor
    e1: Tensor
    e2: Tensor
    weight: Tensor
    fitted: Tensor | None = None  # the group's current target model applied to `learner` (B, D, h, w), float32


@dataclass
class MemoryBank:
    """Entries in slots, with their sample weights; the stacked views are rebuilt only when the bank changes."""

    cfg: MemoryConfig
    entries: list[MemoryEntry] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    version: int = 0

    def due(self, frames_since_first: int) -> bool:
        """Whether the frame `frames_since_first` after the first joins the memory."""
        return frames_since_first > 0 and frames_since_first % self.cfg.interval == 0

    def add(self, entry: MemoryEntry) -> None:
        """Store `entry`; the first entry ever added is the first frame and is never replaced."""
        self.version += 1
        if not self.entries:
            self.entries.append(entry)
            self.weights.append(1.0)
            return
        if len(self.entries) < self.cfg.size:
            slot = len(self.entries)
            self.entries.append(entry)
            self.weights.append(0.0)
        elif self.cfg.policy == "paper":
            slot = len(self.entries) - 1
            del self.entries[1], self.weights[1]
            self.entries.append(entry)
            self.weights.append(0.0)
        else:
            slot = 1 + min(range(len(self.entries) - 1), key=lambda i: self.weights[1 + i])
            self.entries[slot] = entry
        self._reweigh(slot)

    def _reweigh(self, slot: int) -> None:
        if self.cfg.policy == "paper":
            self.weights = [1.0] * len(self.entries)
            return
        lr = self.cfg.learning_rate
        w = [x * (1 - lr) for x in self.weights]
        w[slot] = lr
        total = sum(w)
        w = [x / total for x in w]
        if w[0] < self.cfg.first_min_weight:
            rest = sum(w[1:])
            w = [self.cfg.first_min_weight] + [x * (1 - self.cfg.first_min_weight) / rest for x in w[1:]]
        self.weights = w

    @property
    def frames(self) -> list[int]:
        return [e.frame for e in self.entries]

    def stacked(self, name: str) -> Tensor:
        """Field `name` of every entry, stacked to (N, B, ...)."""
        return torch.stack([getattr(e, name) for e in self.entries])

    def sample_weights(self, like: Tensor) -> Tensor | None:
        """Per-sample weights (N, B) for the learner, or None where all count equally (the paper's policy)."""
        if self.cfg.policy == "paper":
            return None
        w = torch.tensor(self.weights, dtype=like.dtype, device=like.device)
        return w[:, None].expand(-1, like.shape[0])
