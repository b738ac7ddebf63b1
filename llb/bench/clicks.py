"""`llb bench-clicks`: how long a click takes, for each click backend, on real frames.

A click backend does some work once per frame (`prepare`: the click model's backbone features and u2netp's
saliency) and then some per click (the model's head, or the fallback's local GrabCut). The benchmark clicks each
frame with the standard protocol (`llb.evaluation.clicks.run_protocol`, 10 clicks) and reports, per backend, the
ms per click (mean, median, p90, max: what a person waits after each click) and the ms per frame. The default
frames are the DAVIS 2017 dev first frames at 480p, the size the issue's goal (150 ms per click on 2 cores) names.
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from ..evaluation.clicks import (
    MAX_CLICKS,
    METHODS,
    Sample,
    Segmenter,
    build_methods,
    davis_first_frames,
    run_protocol,
)
from ..training.config import shared_data_dir
from .report import write_json


def bench_clicks(
    methods: dict[str, Segmenter], samples: Sequence[Sample], max_clicks: int = MAX_CLICKS
) -> dict[str, dict]:
    """Per backend: ms per click (mean, median, p90, max), ms per frame (mean) and the counts behind them."""
    report: dict[str, dict] = {}
    for name, method in methods.items():
        clicks: list[float] = []
        frames: list[float] = []
        for sample in samples:
            result = run_protocol(method, sample, max_clicks)
            clicks += result.ms_per_click
            frames.append(result.ms_prepare)
        times = np.array(clicks)
        report[name] = {
            "backend": method.name,
            "ms_per_click_mean": round(float(times.mean()), 1),
            "ms_per_click_median": round(float(np.median(times)), 1),
            "ms_per_click_p90": round(float(np.percentile(times, 90)), 1),
            "ms_per_click_max": round(float(times.max()), 1),
            "ms_per_frame": round(float(np.mean(frames)), 1),
            "clicks": len(clicks),
            "frames": len(frames),
        }
    return report


def format_clicks_table(report: dict[str, dict]) -> str:
    rows = [
        "| backend | ms/click mean | median | p90 | max | ms/frame (once) | clicks |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in report.items():
        if name == "meta":
            continue
        rows.append(
            f"| {name} ({r['backend']}) | {r['ms_per_click_mean']:.0f} | {r['ms_per_click_median']:.0f} | "
            f"{r['ms_per_click_p90']:.0f} | {r['ms_per_click_max']:.0f} | {r['ms_per_frame']:.0f} | {r['clicks']} |"
        )
    return "\n".join(rows)


def add_bench_clicks_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--davis-root",
        default=None,
        help="DAVIS-format root whose first frames are clicked (default: ../shared/data/davis2017-dev, 480p)",
    )
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {','.join(METHODS)}")
    p.add_argument("--checkpoint", default=None, help="click model checkpoint (default: the shipped lite-clicks)")
    p.add_argument("--max-clicks", type=int, default=MAX_CLICKS, help="clicks per frame (default 10)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch and OpenCV (default 2)")
    p.add_argument("--json", default=None, help="write the figures here as JSON")


def run_bench_clicks(args: argparse.Namespace) -> int:
    """`llb bench-clicks`: time every backend on the frames, print the table, write the JSON."""
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    root = args.davis_root or str(shared_data_dir() / "davis2017-dev")
    samples = davis_first_frames(root)
    methods = build_methods([m.strip() for m in args.methods.split(",") if m.strip()], args.checkpoint)
    report: dict[str, dict] = bench_clicks(methods, samples, args.max_clicks)
    h, w = samples[0].image.shape[:2]
    report["meta"] = {
        "frames_root": root,
        "frame_size": f"{w}x{h}",
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    print(f"llb bench-clicks: {len(samples)} frames of {root} ({w}x{h}), {args.threads} CPU threads")
    print(format_clicks_table(report))
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0
