"""Why the AFM gates stay near 0.5 (README: model card): how far each module's weights moved in training, and the
scale of the gates' inputs E1*, E2* and pre-activations on real frames.

    python scripts/afm_diagnostics.py drift BEFORE.safetensors AFTER.safetensors [AFTER2 ...]
    python scripts/afm_diagnostics.py inputs CHECKPOINT DAVIS_ROOT [--sequences 2] [--frames 15]
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
    args = parser.parse_args()
    if args.command == "drift":
        drift(args.before, args.after)
    else:
        torch.set_num_threads(1)
        inputs(args.checkpoint, args.root, args.sequences, args.frames)


if __name__ == "__main__":
    main()
