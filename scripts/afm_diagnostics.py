"""Why the AFM gates stay near 0.5 (README: model card): how far each module's weights moved in training, and the
scale of the gates' inputs E1*, E2* and pre-activations on real frames.

    python scripts/afm_diagnostics.py drift BEFORE.safetensors AFTER.safetensors [AFTER2 ...]
    python scripts/afm_diagnostics.py inputs CHECKPOINT DAVIS_ROOT [--sequences 2] [--frames 15]
    python scripts/afm_diagnostics.py constant CHECKPOINT TRAIN_ROOT VAL_ROOT [VAL_ROOT ...] [--modes channel half]

`constant` asks what the gates' adaptivity adds: it measures each gate channel's mean on training sequences
(never the held-out ones), then validates as training does (the same 11 sequences: the VAL_ROOTs and the held-out
sequences of TRAIN_ROOT) with the gates replaced by those constants (`channel`: E_tar = m1 . E1* + m2 . E2* per
channel) or by 0.5 (`half`: the untrained AFM, JOINT's sum halved), beside the learned AFM (`afm`).
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from llb.checkpoint import read_checkpoint
from llb.evaluation.davis import davis_sequences, segment_sequence
from llb.inference.session import Segmenter
from llb.training.config import HOLDOUT
from llb.training.validation import GateStatistics, run_validation, validation_sets


def drift(before: str, after: list[str]) -> None:
    """Relative L2 change ||after - before|| / ||before|| of each trainable module, in percent."""
    _, base, _ = read_checkpoint(before)
    for path in after:
        _, state, _ = read_checkpoint(path)
        moved: dict[str, float] = defaultdict(float)
        size: dict[str, float] = defaultdict(float)
        for key, value in base.items():
            if key not in state or not value.is_floating_point() or "running_" in key:
                continue
            module = ".".join(key.split(".")[:2])
            moved[module] += float((state[key].float() - value.float()).pow(2).sum())
            size[module] += float(value.float().pow(2).sum())
        print(path)
        for module in sorted(moved):
            if moved[module] > 0:
                print(f"  {module:40s} {100 * (moved[module] / size[module]) ** 0.5:8.3f} %")


def _stats(x: Tensor) -> dict[str, float]:
    """x (D, h, w): mean |x|, spread of the channel means, mean spread over pixels within a channel."""
    return {
        "abs": float(x.abs().mean()),
        "channel_std": float(x.mean((1, 2)).std()),
        "pixel_std": float(x.std((1, 2)).mean()),
    }


def inputs(checkpoint: str, root: str, sequences: int, frames: int) -> None:
    """Track the first `frames` frames of `sequences` sequences and average, over frames, the statistics of E1*,
    E2*, each gate's hidden layer and its pre-sigmoid output."""
    seg = Segmenter.from_pretrained(checkpoint, device="cpu")
    fusion = seg.model.fusion
    rows: dict[str, list[dict[str, float]]] = defaultdict(list)

    def hook(module: torch.nn.Module, args: tuple[Tensor, Tensor], _: Tensor) -> None:
        for name, e, gate in (("E1*", args[0], module.gate_transduction), ("E2*", args[1], module.gate_induction)):
            e = e.float()
            hidden = torch.relu(gate.fc1(e))
            for what, x in ((name, e), (f"{name} gate hidden", hidden), (f"{name} gate logit", gate.fc2(hidden))):
                rows[what].extend(_stats(sample) for sample in x)

    handle = fusion.register_forward_hook(hook)
    with tempfile.TemporaryDirectory() as out:
        for seq in davis_sequences(root)[:sequences]:
            segment_sequence(seg, seq, Path(out) / seq.name, frames, quiet=True)
    handle.remove()
    for what, values in rows.items():
        print(f"{what:18s}", "  ".join(f"{k} {np.mean([v[k] for v in values]):.3f}" for k in values[0]))
    for name in ("gate_transduction", "gate_induction"):
        gate = getattr(fusion, name)
        print(f"{name}: weight std fc1 {gate.fc1.weight.std():.4f}, fc2 {gate.fc2.weight.std():.4f}")


class ConstantGates(torch.nn.Module):
    """The AFM with each gate fixed per channel: E_tar = m1 . E1* + m2 . E2*, m1 and m2 of shape (D,)."""

    def __init__(self, m1: Tensor, m2: Tensor) -> None:
        super().__init__()
        self.register_buffer("m1", m1.view(1, -1, 1, 1).float())
        self.register_buffer("m2", m2.view(1, -1, 1, 1).float())

    def forward(self, e1_star: Tensor, e2_star: Tensor) -> Tensor:
        """E1*, E2* (B, D, h, w) -> E_tar (B, D, h, w), in E1*'s dtype."""
        return (self.m1 * e1_star + self.m2 * e2_star).to(e1_star.dtype)


def channel_means(seg: Segmenter, root: str, sequences: int, frames: int) -> tuple[Tensor, Tensor]:
    """Each gate's per-channel mean (D,) over the first `frames` frames of the first `sequences` sequences of
    `root` that are not held out."""
    stats = GateStatistics()
    handle = seg.model.fusion.register_forward_hook(stats.hook)
    chosen = [s for s in davis_sequences(root) if s.name not in HOLDOUT][:sequences]
    with tempfile.TemporaryDirectory() as out:
        for seq in chosen:
            segment_sequence(seg, seq, Path(out) / seq.name, frames, quiet=True)
    handle.remove()
    print("channel means from", ", ".join(s.name for s in chosen))
    g1, g2 = (stats.gates[name] for name in ("transduction", "induction"))
    return g1.channel_sum / g1.channel_count, g2.channel_sum / g2.channel_count


def constant(checkpoint: str, train_root: str, val_roots: list[str], modes: list[str], sequences: int) -> None:
    """Validation J&F (mean of all sequences and per set) with the learned gates and with constant ones."""
    seg = Segmenter.from_pretrained(checkpoint, device="cpu")
    learned = seg.model.fusion
    m1, m2 = channel_means(seg, train_root, sequences, frames=30)
    print(f"channel means: transduction {m1.min():.3f}-{m1.max():.3f}, induction {m2.min():.3f}-{m2.max():.3f}")
    fusions = {
        "afm": learned,
        "channel": ConstantGates(m1, m2),
        "half": ConstantGates(torch.full_like(m1, 0.5), torch.full_like(m2, 0.5)),
    }
    sets = validation_sets(val_roots, HOLDOUT, [train_root])
    for mode in modes:
        seg.model.fusion = fusions[mode]
        with tempfile.TemporaryDirectory() as work, torch.no_grad():
            results, _ = run_validation(seg, sets, work)
        scores = "  ".join(f"{k[4:-4] or 'mean'} {v:.1f}" for k, v in results.items() if k.endswith("_J&F"))
        print(f"{mode:8s} {scores}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("drift", help="relative weight change per module")
    p.add_argument("before")
    p.add_argument("after", nargs="+")
    p = sub.add_parser("inputs", help="scale of the AFM inputs and gate pre-activations")
    p.add_argument("checkpoint")
    p.add_argument("root")
    p.add_argument("--sequences", type=int, default=2)
    p.add_argument("--frames", type=int, default=15)
    p = sub.add_parser("constant", help="validation J&F with the gates replaced by constants")
    p.add_argument("checkpoint")
    p.add_argument("train_root", help="the training videos: channel means and the held-out sequences")
    p.add_argument("val_roots", nargs="+")
    p.add_argument("--modes", nargs="+", choices=("afm", "channel", "half"), default=["channel", "half"])
    p.add_argument("--sequences", type=int, default=4, help="training sequences for the channel means")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.command == "drift":
        drift(args.before, args.after)
    elif args.command == "inputs":
        inputs(args.checkpoint, args.root, args.sequences, args.frames)
    else:
        constant(args.checkpoint, args.train_root, args.val_roots, args.modes, args.sequences)


if __name__ == "__main__":
    main()
