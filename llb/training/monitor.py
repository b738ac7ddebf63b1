"""What a training run shows and writes besides its checkpoints (rank 0 only): the progress bar, `log.csv` and
`val.csv`, TensorBoard events in `tb/`, and `curves.png`, the loss and validation J&F drawn from the two CSVs.

TensorBoard and matplotlib are imported where they are first used: they take a second or two to load, and
only training needs them.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

LOG_FIELDS = ("step", "loss", "seg", "cos", "iou", "lr", "grad_norm", "sec_per_step", "clips_per_s")
# log.csv column -> TensorBoard tag (the part before "/" groups the charts)
TB_TAGS = {
    "loss": "loss/total",
    "seg": "loss/segmentation",
    "cos": "loss/cosine",
    "iou": "train/iou",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "clips_per_s": "speed/clips_per_s",
}


class CsvLog:
    """log.csv of a run: one row per logged step; validation results go to val.csv. On resume, rows after the
    resumed step (written by the interrupted run after its last save) are dropped."""

    def __init__(self, path: Path, step: int) -> None:
        self.path = path
        self.val_path = path.with_name("val.csv")
        for p in (self.path, self.val_path):
            if p.is_file():
                with p.open(newline="") as f:
                    rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
                fields = list(rows[0]) if rows else None
                p.unlink()
                if fields:
                    self._append(p, fields, rows)

    @staticmethod
    def _append(path: Path, fields: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
        new = not path.is_file()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict[str, float]) -> None:
        self._append(self.path, LOG_FIELDS, [{k: _fmt(v) for k, v in row.items()}])

    def write_validation(self, step: int, results: dict[str, float]) -> None:
        if results:
            row = {"step": step, **{k: _fmt(v) for k, v in results.items()}}
            self._append(self.val_path, list(row), [row])


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


class TensorBoard:
    """Scalars of a run as TensorBoard events (`tensorboard --logdir RUN/tb`)."""

    def __init__(self, folder: Path, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # like CsvLog, a resumed run drops the events written after the state it resumes from
        self.writer = SummaryWriter(str(folder), purge_step=step + 1 if step else None)

    def training(self, step: int, stats: dict[str, float]) -> None:
        """Loss terms, IoU, learning rate, gradient norm and speed (steps and clips per second)."""
        for key, tag in TB_TAGS.items():
            if key in stats:
                self.writer.add_scalar(tag, stats[key], step)
        if stats.get("sec_per_step"):
            self.writer.add_scalar("speed/it_per_s", 1 / stats["sec_per_step"], step)

    def validation(self, step: int, results: dict[str, float]) -> None:
        """Validation scores and gate statistics: val_J&F -> val/J&F, gate_induction_mean -> gates/induction_mean."""
        for key, value in results.items():
            tag = f"gates/{key[5:]}" if key.startswith("gate_") else f"val/{key.removeprefix('val_')}"
            self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        """Write the pending events now (SummaryWriter otherwise writes every two minutes)."""
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class RunMonitor:
    """Rank 0's view of a run in folder `run`: a progress bar (tqdm: steps/s and ETA, with the loss and the last
    J&F after them), log.csv/val.csv and TensorBoard every `log_every` steps and at the last, curves.png on
    `draw`."""

    def __init__(self, run: Path, step: int, total: int, log_every: int, quiet: bool = False) -> None:
        self.run = run
        self.total = total
        self.log_every = log_every
        self.csv = CsvLog(run / "log.csv", step)
        self.tb = TensorBoard(run / "tb", step)
        self.postfix: dict[str, str] = {}
        self.bar = tqdm(total=total, initial=step, unit="step", disable=quiet, dynamic_ncols=True)

    def training(self, step: int, stats: dict[str, float]) -> None:
        """After each step: advance the bar; log on schedule."""
        self.postfix.update(loss=f"{stats['loss']:.2f}", iou=f"{stats['iou']:.2f}")
        self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.update(1)
        if step % self.log_every == 0 or step == self.total:
            self.csv.write({"step": step, **stats})
            self.tb.training(step, stats)

    def validation(self, step: int, results: dict[str, float]) -> None:
        """After a validation: val.csv, TensorBoard, and its J&F on the bar."""
        if not results:
            return
        self.csv.write_validation(step, results)
        self.tb.validation(step, results)
        if "val_J&F" in results:
            self.postfix["J&F"] = f"{results['val_J&F']:.1f}"

    def draw(self) -> Path | None:
        """Redraw curves.png from the logs so far, if log.csv has a row yet (and bring TensorBoard's files up to
        date too)."""
        self.tb.flush()
        return plot_curves(self.run) if self.csv.path.is_file() else None

    def close(self) -> None:
        self.bar.close()
        self.tb.close()


def read_columns(path: Path) -> dict[str, np.ndarray]:
    """A CSV log as one float array per column ({} when the file is absent)."""
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {key: np.array([float(r[key] or "nan") for r in rows]) for key in rows[0]}


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of each `window` consecutive values (len(values) - window + 1 of them)."""
    return np.convolve(values, np.ones(window) / window, mode="valid")


def plot_curves(run: str | Path, out: str | Path | None = None) -> Path:
    """Draw a run's training loss (log.csv), its validation J&F overall and per set, and, for LLB, the AFM gate
    statistics (val.csv) as a PNG, by default RUN/curves.png. Drawn on a bare matplotlib Figure (the Agg
    renderer): no window, no pyplot state."""
    from matplotlib.figure import Figure

    run = Path(run)
    train = read_columns(run / "log.csv")
    if not train:
        raise FileNotFoundError(f"{run} has no log.csv rows yet: pass the run folder of `llb train` (--out)")
    val = read_columns(run / "val.csv")
    gates = sorted({k.split("_")[1] for k in val if k.startswith("gate_")})
    fig = Figure(figsize=(16 if gates else 11, 4), layout="constrained")
    axes = fig.subplots(1, 3 if gates else 2)
    loss_ax, val_ax = axes[0], axes[1]
    steps, loss = train["step"], train["loss"]
    window = max(1, len(loss) // 25)
    loss_ax.plot(steps, loss, color="tab:blue", alpha=0.3 if window > 1 else 1, linewidth=0.8, label="loss")
    if window > 1:
        loss_ax.plot(steps[window - 1 :], moving_average(loss, window), color="tab:blue", label=f"mean of {window}")
    loss_ax.set(title="training loss", xlabel="step", ylabel="loss")
    loss_ax.legend(loc="upper right")
    loss_ax.grid(alpha=0.3)
    xlim = (0, max(steps.max(), 1))
    if val:
        sets = [k for k in val if k.startswith("val_") and k.endswith("_J&F") and k != "val_J&F"]
        if "val_J&F" in val:
            label = "J&F (mean over sequences)" if sets else "J&F"
            val_ax.plot(val["step"], val["val_J&F"], "-o", color="black", markersize=3, label=label)
        for key in sets:
            val_ax.plot(val["step"], val[key], "--o", markersize=2, linewidth=1, label=key[4:-4] + " J&F")
        if not sets:
            for key, style in (("val_J", "--"), ("val_F", ":")):
                if key in val:
                    val_ax.plot(val["step"], val[key], style, markersize=3, label=key.removeprefix("val_"))
        val_ax.legend(loc="lower right", fontsize=8)
    else:
        message = "no validation yet\n(--val-root and --val-every)"
        val_ax.text(0.5, 0.5, message, ha="center", va="center", transform=val_ax.transAxes)
    val_ax.set(title="validation", xlabel="step", ylabel="score (%)", xlim=xlim, ylim=(0, 100))
    val_ax.grid(alpha=0.3)
    if gates:
        draw_gates(axes[2], val, gates, xlim)
    path = Path(out) if out else run / "curves.png"
    fig.savefig(path, dpi=100)
    return path


def draw_gates(ax: Any, val: dict[str, np.ndarray], gates: Sequence[str], xlim: tuple[float, float]) -> None:
    """The AFM gates at each validation: mean with a band of one standard deviation, and the shares of values
    below 0.25 and above 0.75."""
    for name, color in zip(gates, ("tab:orange", "tab:green", "tab:purple"), strict=False):
        mean, std = val[f"gate_{name}_mean"], val[f"gate_{name}_std"]
        ax.plot(val["step"], mean, "-o", color=color, markersize=3, label=f"{name} gate mean")
        ax.fill_between(val["step"], mean - std, mean + std, color=color, alpha=0.15)
        ax.plot(val["step"], val[f"gate_{name}_low"], ":", color=color, label=f"{name} share < 0.25")
        ax.plot(val["step"], val[f"gate_{name}_high"], "--", color=color, label=f"{name} share > 0.75")
    ax.set(title="AFM gates (validation frames)", xlabel="step", ylabel="gate value / share", xlim=xlim, ylim=(0, 1))
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
