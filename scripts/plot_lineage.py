"""Draw the campaign's lineage from assets/campaign.csv (one row per checkpoint the campaign validated: its parent
stage, steps, validation J&F per set and, for LLB, the AFM gate statistics on the validation frames):
assets/training_curves.png (validation J&F against the total steps behind each checkpoint) and assets/gates.png
(the gates of the shipped LLB files). The CSV outlives the run folders, which stay on the machine that trained.

    python scripts/plot_lineage.py [assets/campaign.csv] [assets]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from matplotlib.figure import Figure

SETS = {"davis2017-dev": "-", "extra-val": "--", "holdout": ":"}
COLOURS = {"llb": "tab:blue", "joint": "tab:orange"}
GATES = {"trans": "transduction", "ind": "induction"}


def read_rows(path: Path) -> list[dict[str, str]]:
    """The CSV's rows as dicts of strings (empty where not measured)."""
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def number(row: dict[str, str], key: str) -> float:
    """A column as a float (NaN where empty)."""
    return float(row[key]) if row.get(key) else float("nan")


def shipped(rows: list[dict[str, str]], variant: str) -> list[dict[str, str]]:
    """The variant's shipped files in training order."""
    return [r for r in rows if r["variant"] == variant and r["shipped"] == "yes"]


def draw_validation(rows: list[dict[str, str]], out: Path) -> None:
    """Mean J&F of 11 sequences (shipped files joined, other checkpoints hollow, a stage's midway validations
    unlabelled) and J&F per set."""
    fig = Figure(figsize=(12, 4.2))
    overall, per_set = fig.subplots(1, 2)
    for variant, colour in COLOURS.items():
        line = shipped(rows, variant)
        steps = [number(r, "total_steps") for r in line]
        overall.plot(steps, [number(r, "mean11") for r in line], "o-", color=colour, label=f"{variant} (shipped files)")
        others = [r for r in rows if r["variant"] == variant and r["shipped"] != "yes"]
        overall.plot(
            [number(r, "total_steps") for r in others],
            [number(r, "mean11") for r in others],
            "o",
            mfc="none",
            color=colour,
            label=f"{variant} (not shipped)",
        )
        for r in [*line, *(r for r in others if "@" not in r["file"])]:  # midway validations unlabelled
            overall.annotate(
                r["file"],
                (number(r, "total_steps"), number(r, "mean11")),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
        for name, style in SETS.items():
            per_set.plot(steps, [number(r, name) for r in line], "o" + style, color=colour, label=f"{variant} {name}")
    overall.set(title="validation J&F, mean of 11 sequences", xlabel="total training steps (batch 4)", ylabel="J&F (%)")
    per_set.set(
        title="validation J&F per set, shipped files", xlabel="total training steps (batch 4)", ylabel="J&F (%)"
    )
    for ax in (overall, per_set):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def draw_gates(rows: list[dict[str, str]], out: Path) -> None:
    """The shipped LLB files' gates: mean with a one-std band, shares below 0.25 and above 0.75."""
    line = [r for r in shipped(rows, "llb") if r["trans_mean"]]
    steps = [number(r, "total_steps") for r in line]
    fig = Figure(figsize=(11, 4))
    for ax, (key, name) in zip(fig.subplots(1, 2), GATES.items(), strict=True):
        mean = [number(r, f"{key}_mean") for r in line]
        std = [number(r, f"{key}_std") for r in line]
        ax.plot(steps, mean, "o-", label="mean")
        ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
        ax.plot(steps, [number(r, f"{key}_low") / 100 for r in line], "v:", label="share < 0.25")
        ax.plot(steps, [number(r, f"{key}_high") / 100 for r in line], "^--", label="share > 0.75")
        ax.set(
            title=f"AFM {name} gate, shipped lite-llb files (band: 1 std)", xlabel="total training steps", ylim=(0, 1)
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str]) -> None:
    source = Path(argv[0]) if argv else Path("assets/campaign.csv")
    out = Path(argv[1]) if len(argv) > 1 else Path("assets")
    rows = read_rows(source)
    draw_validation(rows, out / "training_curves.png")
    draw_gates(rows, out / "gates.png")


if __name__ == "__main__":
    main(sys.argv[1:])
