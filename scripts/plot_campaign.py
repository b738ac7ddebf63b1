"""Draw the CPU campaign's figures from its run folders: assets/training_curves.png (the loss of every lineage
and its validation J&F, overall and per set) and assets/gates.png (the AFM gate statistics of the LLB lineages
at each validation). A lineage is a name and its run folders in training order (each started from the previous
one's export), counted as one run of steps:

    python scripts/plot_campaign.py runs/campaign llb=llb/synthetic,llb/synthetic-b joint=joint/synthetic,...
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from llb.training.monitor import moving_average, read_columns

SETS = ("davis2017-dev", "extra-val", "holdout")


def boundaries(runs: list[Path]) -> list[int]:
    """The lineage's step at the end of each of its runs."""
    return list(np.cumsum([int(read_columns(run / "log.csv")["step"].max()) for run in runs]))


def stitched(runs: list[Path], name: str) -> dict[str, np.ndarray]:
    """A CSV of the lineage's runs as one, each run's steps counted after the previous runs' last."""
    parts = []
    for run, offset in zip(runs, [0, *boundaries(runs)], strict=False):
        columns = read_columns(run / name)
        if columns:
            columns["step"] = columns["step"] + offset
            parts.append(columns)
    if not parts:
        return {}
    keys = [k for k in parts[0] if all(k in p for p in parts)]
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def training_curves(lineages: dict[str, list[Path]], out: Path) -> None:
    fig = Figure(figsize=(16, 4.2), layout="constrained")
    loss_ax, val_ax, set_ax = fig.subplots(1, 3)
    for tag, runs in lineages.items():
        log, val = stitched(runs, "log.csv"), stitched(runs, "val.csv")
        window = max(5, len(log["loss"]) // 30)
        (line,) = loss_ax.plot(log["step"][window - 1 :], moving_average(log["loss"], window), label=tag)
        if val:
            val_ax.plot(val["step"], val["val_J&F"], "-o", color=line.get_color(), markersize=4, label=tag)
            for name, style in zip(SETS, ("-", "--", ":"), strict=True):
                key = f"val_{name}_J&F"
                if key in val:
                    set_ax.plot(val["step"], val[key], style, marker="o", markersize=3, color=line.get_color())
    first = next(iter(lineages.values()))
    for ax in (loss_ax, val_ax, set_ax):
        for step in boundaries(first)[:-1]:
            ax.axvline(step, color="grey", linewidth=0.8)
        ax.grid(alpha=0.3)
    stages = " | ".join(run.name for run in first)
    loss_ax.set(title="training loss (moving mean of the logged steps)", xlabel=f"step ({stages})", ylabel="loss")
    val_ax.set(title="validation J&F, mean over 11 sequences", xlabel="step", ylabel="J&F (%)")
    set_ax.set(title="per set: dev (solid), extra-val (dashed), held-out (dotted)", xlabel="step", ylabel="J&F (%)")
    loss_ax.legend()
    val_ax.legend()
    fig.savefig(out, dpi=100)


def gate_plot(lineages: dict[str, list[Path]], out: Path) -> None:
    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, gate in zip(axes, ("transduction", "induction"), strict=True):
        for tag, runs in lineages.items():
            val = stitched(runs, "val.csv")
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
    root = Path(argv[0])
    lineages = {}
    for item in argv[1:]:
        name, _, folders = item.partition("=")
        lineages[name] = [root / folder for folder in folders.split(",")]
    training_curves(lineages, Path("assets/training_curves.png"))
    gate_plot(lineages, Path("assets/gates.png"))
    print("wrote assets/training_curves.png and assets/gates.png")


if __name__ == "__main__":
    main(sys.argv[1:])
