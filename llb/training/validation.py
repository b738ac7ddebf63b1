"""Validation during training: J&F on sets of sequences never trained on and, for LLB, the AFM gate statistics.

A run is validated on DAVIS-format roots (e.g. davis2017-dev and extra-val) and on its held-out training
sequences (`data.holdout`, excluded from its clips), each tracked by the inference session as `llb eval` tracks
it, at the engine's default processing size for the device unless `val_size` says otherwise. The results:

- `val_<set>_J&F` (and `_J`, `_F`): the official DAVIS measure over the objects of that set;
- `val_J&F` (and `val_J`, `val_F`): the mean over all validation sequences of each sequence's J&F, so that a
  sequence with seven objects weighs as much as one with one object;
- for the AFM, per gate (`transduction` for E1*, `induction` for E2*) over every tracked frame: the mean, the
  standard deviation over all values, the spread of the per-channel means over channels and of the per-pixel
  means over pixels, and the shares of values below 0.25 and above 0.75 (`gate_<name>_<stat>`). A gate that has
  not learned reads mean 0.5 with small spreads and no values outside (0.25, 0.75).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from llb.data.layout import DavisSequence
from llb.evaluation.davis import davis_sequences, evaluate_davis
from llb.fusion import AdaptiveFusion
from llb.inference.crop import CropConfig, engine_crop_size
from llb.inference.session import InferenceConfig, Segmenter
from llb.network import LLBNet

Validator = Callable[[LLBNet, int], dict[str, float]]
HOLDOUT_SET = "holdout"
GATE_LOW, GATE_HIGH = 0.25, 0.75


@dataclass(frozen=True)
class ValidationSet:
    """A named list of sequences scored together."""

    name: str
    sequences: list[DavisSequence]


def validation_sets(
    roots: Sequence[str | Path], holdout: Sequence[str] = (), holdout_roots: Sequence[str | Path] = ()
) -> list[ValidationSet]:
    """One set per DAVIS-format root (named after its folder, its ImageSets/val.txt or every sequence), and the
    `holdout` sequences found in `holdout_roots` (the run's training roots) as the set `holdout`."""
    sets = [ValidationSet(Path(root).name, davis_sequences(root)) for root in roots]
    if holdout:
        found = {s.name: s for root in holdout_roots for s in davis_sequences(root) if s.name in holdout}
        missing = [name for name in holdout if name not in found]
        if missing:
            raise ValueError(
                f"held-out sequence(s) {', '.join(missing)} are in no training root; name sequences of the video "
                "roots in data.holdout, or set data.holdout= (empty) to hold none out"
            )
        sets.append(ValidationSet(HOLDOUT_SET, [found[name] for name in holdout]))
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"validation sets must have distinct folder names, got {names}")
    return sets


@dataclass
class _Running:
    """Sums for one gate: all values, per channel, and per pixel (mean over channels)."""

    total: float = 0.0
    total_sq: float = 0.0
    count: int = 0
    low: int = 0
    high: int = 0
    channel_sum: Tensor | None = None
    channel_count: int = 0
    pixel_sum: float = 0.0
    pixel_sq: float = 0.0
    pixel_count: int = 0

    def add(self, gate: Tensor) -> None:
        """gate (B, D, h, w) in (0, 1)."""
        g = gate.detach().double()
        self.total += float(g.sum())
        self.total_sq += float((g * g).sum())
        self.count += g.numel()
        self.low += int((g < GATE_LOW).sum())
        self.high += int((g > GATE_HIGH).sum())
        per_channel = g.sum(dim=(0, 2, 3))
        self.channel_sum = per_channel if self.channel_sum is None else self.channel_sum + per_channel
        self.channel_count += g.numel() // g.shape[1]
        pixel = g.mean(dim=1)
        self.pixel_sum += float(pixel.sum())
        self.pixel_sq += float((pixel * pixel).sum())
        self.pixel_count += pixel.numel()

    def summary(self) -> dict[str, float]:
        mean = self.total / self.count
        pixel_mean = self.pixel_sum / self.pixel_count
        channel_means = self.channel_sum / self.channel_count
        return {
            "mean": mean,
            "std": float(np.sqrt(max(self.total_sq / self.count - mean * mean, 0.0))),
            "channel_std": float(channel_means.std(unbiased=False)),
            "pixel_std": float(np.sqrt(max(self.pixel_sq / self.pixel_count - pixel_mean**2, 0.0))),
            "low": self.low / self.count,
            "high": self.high / self.count,
        }


@dataclass
class GateStatistics:
    """Statistics of the AFM's two gate maps over every frame the fusion module runs on while attached."""

    gates: dict[str, _Running] = field(default_factory=lambda: {"transduction": _Running(), "induction": _Running()})

    def hook(self, module: nn.Module, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        """Forward hook of an AdaptiveFusion: recompute its gates in float32 from E1*, E2* (B, D, h, w)."""
        g1, g2 = module.gates(*(x.float() for x in inputs))
        self.gates["transduction"].add(g1)
        self.gates["induction"].add(g2)

    def summary(self) -> dict[str, float]:
        """`gate_<name>_<stat>` for both gates (empty when no frame was seen)."""
        return {
            f"gate_{name}_{stat}": value
            for name, running in self.gates.items()
            if running.count
            for stat, value in running.summary().items()
        }


def run_validation(
    seg: Segmenter, sets: Sequence[ValidationSet], work: str | Path, max_frames: int | None = None
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Track and score every sequence of every set with `seg` as `llb eval` does (`evaluate_davis`; masks in
    `work/<set>/masks/<sequence>/`, the set's results.json and tables in `work/<set>/`). Returns the
    per-set and overall J&F (module docstring) with, where the network fuses with the AFM, the gate statistics;
    and J&F, J and F per sequence (`<set>/<sequence>`)."""
    fusion = seg.model.fusion
    gates = GateStatistics() if isinstance(fusion, AdaptiveFusion) else None
    handle = fusion.register_forward_hook(gates.hook) if gates else None
    results: dict[str, float] = {}
    per_sequence: dict[str, dict[str, float]] = {}
    try:
        for vset in sets:
            summary = evaluate_davis(seg, vset.sequences, Path(work) / vset.name, max_frames=max_frames).summary
            for key in ("J&F", "J", "F"):
                results[f"val_{vset.name}_{key}"] = summary[key]
            for name, seq_scores in summary["sequences"].items():
                per_sequence[f"{vset.name}/{name}"] = {k: seq_scores[f"{k}-Mean"] for k in ("J&F", "J", "F")}
    finally:
        if handle is not None:
            handle.remove()
    overall = {f"val_{key}": float(np.mean([s[key] for s in per_sequence.values()])) for key in ("J&F", "J", "F")}
    results = {**overall, **results}
    if gates is not None:
        results.update(gates.summary())
    return results, per_sequence


def make_validator(
    sets: Sequence[ValidationSet], work: str | Path, size: tuple[int, int] | None = None, max_frames: int | None = None
) -> Validator:
    """A training validator: the model as it trains, in an inference session on its own device, processing
    crops of `size` (H, W; None: the engine's default for that device). Each validation also writes the scores
    of every sequence to `work/sequences-<step>.json`."""

    def validate(model: LLBNet, step: int) -> dict[str, float]:
        device = next(model.parameters()).device
        crop = CropConfig(size=tuple(size) if size else engine_crop_size(device))
        seg = Segmenter(model, InferenceConfig(crop=crop), device)
        with torch.no_grad():
            results, per_sequence = run_validation(seg, sets, work, max_frames)
        (Path(work) / f"sequences-{step}.json").write_text(json.dumps(per_sequence, indent=1))
        return results

    return validate
