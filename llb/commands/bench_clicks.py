"""`llb bench-clicks`: the options, a timing of every click backend on DAVIS first frames (llb.bench.clicks),
and the table and JSON it prints and writes."""

from __future__ import annotations

import argparse
import platform

import cv2
import torch

from llb.bench.clicks import bench_clicks, format_clicks_table
from llb.bench.report import write_json
from llb.evaluation.clicks import MAX_CLICKS, METHODS, build_methods, davis_first_frames
from llb.training.config import shared_data_dir


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
