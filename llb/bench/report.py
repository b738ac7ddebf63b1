"""What a benchmark gives back: a JSON document for machines, a table for people, a plot of time and memory
against video length (drawn with OpenCV, which the project already needs)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .measure import STAGES, Run, summarise

UNTRAINED_NOTE = (
    "untrained weights: an untrained network does exactly the work of a trained one, so its speed is the same"
)
HEADLINE = ("fps", "ms_median", "ms_p90", "peak_rss_mb", "peak_gpu_mb", "stages")
DETAIL = ("ms_mean", "cpu_ms_median", "cpu_ms_mean", "engine_fps", "first_frame_ms", "stages_cpu", "load_average")
COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))


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


def _tick_step(raw: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is at least `raw`."""
    if raw <= 0:
        return 1.0
    magnitude = 10 ** np.floor(np.log10(raw))
    return float(next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw))


def _panel(
    canvas: np.ndarray, rect: tuple[int, int, int, int], title: str, curves: list[tuple[np.ndarray, tuple]]
) -> None:
    """A line chart of `curves` (y per frame, BGR colour) in rect (x, y, w, h), y from 0."""
    x0, y0, w, h = rect
    font, grey = cv2.FONT_HERSHEY_SIMPLEX, (90, 90, 90)
    left, bottom = x0 + 60, y0 + h - 30
    top, right = y0 + 30, x0 + w - 15
    cv2.putText(canvas, title, (left, y0 + 18), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    n, ticks = max((len(y) for y, _ in curves), default=1), 5
    step = _tick_step(max((float(np.nanmax(y)) for y, _ in curves if len(y)), default=1.0) * 1.1 / ticks)
    ymax = step * ticks
    for i in range(ticks + 1):
        py = round(bottom - (bottom - top) * i / ticks)
        cv2.line(canvas, (left, py), (right, py), (225, 225, 225), 1)
        cv2.putText(canvas, f"{step * i:g}", (x0 + 5, py + 4), font, 0.4, grey, 1, cv2.LINE_AA)
        fx = round((n - 1) * i / ticks)
        px = round(left + (right - left) * i / ticks)
        cv2.putText(canvas, str(fx + 1), (px - 10, bottom + 18), font, 0.4, grey, 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (left, top), (right, bottom), grey, 1)
    for y, colour in curves:
        if len(y) < 2:
            continue
        xs = left + (right - left) * np.arange(len(y)) / max(n - 1, 1)
        ys = bottom - (bottom - top) * np.asarray(y) / ymax
        pts = np.stack([xs, ys], axis=1).round().astype(np.int32)
        cv2.polylines(canvas, [pts], False, colour, 2, cv2.LINE_AA)


def draw_plot(runs: Sequence[Run], path: str | os.PathLike[str]) -> None:
    """PNG of wall and CPU time per frame (running medians of 25) and memory (RSS, and GPU memory on CUDA)
    against the frame index, one curve per run: all must stay flat with the video's length."""
    gpu = any(run.gpu_mb for run in runs)
    panels = 4 if gpu else 3
    width, height, legend = 500, 380, 22 * len(runs) + 16
    canvas = np.full((height + legend, width * panels, 3), 255, np.uint8)
    colours = [COLOURS[i % len(COLOURS)][::-1] for i in range(len(runs))]
    curves_ms = [(_smooth(np.array([t.wall * 1000 for t in r.timings]), 25), c) for r, c in zip(runs, colours)]
    _panel(canvas, (0, 0, width, height), "ms per frame (running median of 25) vs frame", curves_ms)
    curves_cpu = [(_smooth(np.array([t.cpu * 1000 for t in r.timings]), 25), c) for r, c in zip(runs, colours)]
    _panel(canvas, (width, 0, width, height), "CPU ms per frame (running median of 25) vs frame", curves_cpu)
    curves_rss = [(np.array(r.rss_mb), c) for r, c in zip(runs, colours)]
    _panel(canvas, (2 * width, 0, width, height), "process RSS (MB) vs frame", curves_rss)
    if gpu:
        curves_gpu = [(np.array(r.gpu_mb), c) for r, c in zip(runs, colours)]
        _panel(canvas, (3 * width, 0, width, height), "GPU memory allocated (MB) vs frame", curves_gpu)
    for i, (run, colour) in enumerate(zip(runs, colours)):
        y = height + 14 + 22 * i
        cv2.line(canvas, (60, y - 4), (90, y - 4), colour, 3)
        cv2.putText(canvas, run_label(run), (100, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), canvas):
        raise ValueError(f"could not write the plot to {path}: give a .png path")
