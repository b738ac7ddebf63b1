"""What a benchmark gives back: a JSON document for machines, a table for people, a plot of time and memory
against video length (matplotlib)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .measure import STAGES, Run, summarise

UNTRAINED_NOTE = (
    "untrained weights: an untrained network does exactly the work of a trained one, so its speed is the same"
)
HEADLINE = ("fps", "ms_median", "ms_p90", "peak_rss_mb", "peak_gpu_mb", "stages")
DETAIL = ("ms_mean", "cpu_ms_median", "cpu_ms_mean", "engine_fps", "first_frame_ms", "stages_cpu", "load_average")


def size_name(size: tuple[int, int]) -> str:
    return f"{size[1]}x{size[0]}"


def run_label(run: Run) -> str:
    return f"{run.model} {size_name(run.size)} {run.objects} obj"


def build_report(runs: Sequence[Run], lengths: Sequence[int], warmup: int, meta: dict[str, object]) -> dict:
    """{variant: {...}}: per variant, at the top the figures of its first (size, objects) run at the longest
    length (fps, ms_median, ms_p90, peak_rss_mb, peak_gpu_mb, stages in mean ms per frame, and more), every
    (size, objects, length) in `runs`, and the per-frame series in `series`."""
    report: dict[str, dict] = {}
    for run in runs:
        entry = report.setdefault(
            run.variant,
            {"model": run.model, "trained": run.trained, "device": run.device, **meta, "runs": [], "series": []},
        )
        if not run.trained:
            entry["note"] = UNTRAINED_NOTE
        for n in sorted({min(n, len(run.timings)) for n in lengths}):
            entry["runs"].append(
                {
                    "size": size_name(run.size),
                    "objects": run.objects,
                    **summarise(run, n, warmup),
                    "load_average": [round(x, 2) for x in run.load_average],
                    "load_average_end": [round(x, 2) for x in run.load_average_end],
                }
            )
        entry["series"].append(
            {
                "size": size_name(run.size),
                "objects": run.objects,
                "ms": [round(t.wall * 1000, 2) for t in run.timings],
                "cpu_ms": [round(t.cpu * 1000, 2) for t in run.timings],
                "rss_mb": [round(x, 1) for x in run.rss_mb],
                "gpu_mb": [round(x, 1) for x in run.gpu_mb],
            }
        )
    for entry in report.values():
        first = entry["runs"][0]
        top = max(
            (r for r in entry["runs"] if (r["size"], r["objects"]) == (first["size"], first["objects"])),
            key=lambda r: r["frames"],
        )
        entry.update({k: top[k] for k in ("size", "objects", "frames", *HEADLINE, *DETAIL)})
    return report


def write_json(report: dict, path: str | os.PathLike[str]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=1) + "\n")


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def format_table(report: dict) -> str:
    """Variants side by side, one block per (size, objects, length), stage times below the totals."""
    variants = list(report)
    names = [report[v]["model"] for v in variants]
    width = max(24, *(len(n) + 2 for n in names))
    blocks: dict[tuple, list[dict | None]] = {}
    for i, v in enumerate(variants):
        for r in report[v]["runs"]:
            blocks.setdefault((r["size"], r["objects"], r["frames"]), [None] * len(variants))[i] = r
    rows = [
        ("frames per second", "fps"),
        ("ms per frame, median", "ms_median"),
        ("ms per frame, p90", "ms_p90"),
        ("ms median, last 100", "ms_median_last100"),
        ("CPU ms, median", "cpu_ms_median"),
        ("CPU ms, mean", "cpu_ms_mean"),
        ("engine fps (no I/O)", "engine_fps"),
        ("first frame ms", "first_frame_ms"),
        ("peak RSS MB", "peak_rss_mb"),
        ("RSS MB at start", "rss_start_mb"),
        ("peak GPU MB", "peak_gpu_mb"),
    ]
    lines = []
    for (size, objects, frames), cols in blocks.items():
        loads = {tuple(c["load_average"]) for c in cols if c}
        load = ", ".join("/".join(f"{x:.1f}" for x in la) for la in sorted(loads))
        lines.append(f"{size}, {objects} object(s), {frames} frames (load average at start {load})")
        lines.append(f"  {'':<24}" + "".join(f"{n:>{width}}" for n in names))
        for label, key in rows:
            lines.append(f"  {label:<24}" + "".join(f"{_fmt(c[key] if c else None):>{width}}" for c in cols))
        lines.append("  stage, mean ms per frame: wall (share) / CPU")
        for stage in (*STAGES, "other"):
            cells = []
            for c in cols:
                if c is None:
                    cells.append("-")
                    continue
                ms, cpu = c["stages"][stage], c["stages_cpu"][stage]
                cells.append(f"{ms:.1f} ({100 * ms / c['ms_mean']:.0f}%) / {cpu:.1f}")
            lines.append(f"    {stage:<22}" + "".join(f"{cell:>{width}}" for cell in cells))
        lines.append("")
    return "\n".join(lines)


def _smooth(y: np.ndarray, k: int) -> np.ndarray:
    """Running median over `k` frames (so single slow frames do not hide the trend)."""
    if len(y) <= k:
        return y
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(y, (k // 2, k - 1 - k // 2), mode="edge"), k)
    return np.median(windows, axis=1)


def draw_plot(runs: Sequence[Run], path: str | os.PathLike[str]) -> None:
    """PNG of wall and CPU time per frame (running medians of 25) and memory (RSS, and GPU memory on CUDA)
    against the frame index, one curve per run: all must stay flat with the video's length."""
    from matplotlib.figure import Figure  # only plotting needs it; a bare Figure draws without a display

    panels = [
        ("ms per frame (running median of 25)", lambda r: _smooth(np.array([t.wall * 1000 for t in r.timings]), 25)),
        ("CPU ms per frame (running median of 25)", lambda r: _smooth(np.array([t.cpu * 1000 for t in r.timings]), 25)),
        ("process RSS (MB)", lambda r: np.array(r.rss_mb)),
    ]
    if any(run.gpu_mb for run in runs):
        panels.append(("GPU memory allocated (MB)", lambda r: np.array(r.gpu_mb)))
    fig = Figure(figsize=(4.2 * len(panels), 3.6), layout="constrained")
    for ax, (title, series) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        for run in runs:
            y = series(run)
            ax.plot(np.arange(1, len(y) + 1), y, label=run_label(run), linewidth=1.2)
        ax.set(title=title, xlabel="frame", ylim=(0, None))
        ax.grid(alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=min(len(runs), 3))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=110)
    except ValueError as err:
        raise ValueError(f"could not write the plot to {path}: give a .png path ({err})") from err
