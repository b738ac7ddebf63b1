"""Draw the CPU campaign's figures from its run folders (scripts/campaign.sh): assets/training_curves.png (the
loss of every run and its validation J&F, overall and per set, over both stages) and assets/gates.png (the AFM
gate statistics of the LLB runs at each validation).

    python scripts/plot_campaign.py runs/campaign llb joint llb-gate
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from llb.training.monitor import moving_average, read_columns

STAGES = ("synthetic", "video")
SETS = ("davis2017-dev", "extra-val", "holdout")


def stitched(run: Path, name: str) -> dict[str, np.ndarray]:
    """A CSV of both stages as one, the video stage's steps counted after the synthetic stage's last."""
    parts, offset = [], 0
    for stage in STAGES:
        columns = read_columns(run / stage / name)
        if columns:
            columns["step"] = columns["step"] + offset
            parts.append(columns)
        log = read_columns(run / stage / "log.csv")
        offset += int(log["step"].max()) if log else 0
    if not parts:
        return {}
    keys = [k for k in parts[0] if all(k in p for p in parts)]
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def training_curves(root: Path, tags: list[str], out: Path) -> None:
    fig = Figure(figsize=(16, 4.2), layout="constrained")
    loss_ax, val_ax, set_ax = fig.subplots(1, 3)
    for tag in tags:
        log, val = stitched(root / tag, "log.csv"), stitched(root / tag, "val.csv")
        window = 5
        (line,) = loss_ax.plot(log["step"][window - 1 :], moving_average(log["loss"], window), label=tag)
        if val:
            val_ax.plot(val["step"], val["val_J&F"], "-o", color=line.get_color(), markersize=4, label=tag)
            for name, style in zip(SETS, ("-", "--", ":"), strict=True):
                key = f"val_{name}_J&F"
                if key in val:
                    set_ax.plot(val["step"], val[key], style, marker="o", markersize=3, color=line.get_color())
    boundary = read_columns(root / tags[0] / "synthetic" / "log.csv")["step"].max()
    for ax in (loss_ax, val_ax, set_ax):
        ax.axvline(boundary, color="grey", linewidth=0.8)
        ax.grid(alpha=0.3)
    loss_ax.set(title="training loss (mean of 5 logged steps)", xlabel="step (synthetic | video)", ylabel="loss")
    val_ax.set(title="validation J&F, mean over 11 sequences", xlabel="step", ylabel="J&F (%)")
    set_ax.set(title="per set: dev (solid), extra-val (dashed), held-out (dotted)", xlabel="step", ylabel="J&F (%)")
    loss_ax.legend()
    val_ax.legend()
    fig.savefig(out, dpi=100)


def gate_plot(root: Path, tags: list[str], out: Path) -> None:
    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, gate in zip(axes, ("transduction", "induction"), strict=True):
        for tag in tags:
            val = stitched(root / tag, "val.csv")
            if f"gate_{gate}_mean" not in val:
                continue
            mean, std = val[f"gate_{gate}_mean"], val[f"gate_{gate}_std"]
            (line,) = ax.plot(val["step"], mean, "-o", markersize=4, label=f"{tag}: mean")
            ax.fill_between(val["step"], mean - std, mean + std, color=line.get_color(), alpha=0.15)
            low, high = val[f"gate_{gate}_low"], val[f"gate_{gate}_high"]
            ax.plot(val["step"], low, ":", color=line.get_color(), label=f"{tag}: share < 0.25")
            ax.plot(val["step"], high, "--", color=line.get_color(), label=f"{tag}: share > 0.75")
        ax.set(title=f"AFM {gate} gate on the validation frames (band: 1 std)", xlabel="step", ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(out, dpi=100)


def main(argv: list[str]) -> None:
    root, tags = Path(argv[0]), argv[1:]
    training_curves(root, tags, Path("assets/training_curves.png"))
    gate_plot(root, [t for t in tags if (root / t / "synthetic" / "val.csv").is_file()], Path("assets/gates.png"))
    print("wrote assets/training_curves.png and assets/gates.png")


if __name__ == "__main__":
    main(sys.argv[1:])
