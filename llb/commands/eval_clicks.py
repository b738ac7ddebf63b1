"""`llb eval-clicks`: the click protocol (llb.evaluation.clicks) of the click backends on first frames; this
module parses the options, calls the library, writes the report and prints."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llb.evaluation.clicks import (
    MAX_CLICKS,
    METHODS,
    Sample,
    build_methods,
    davis_first_frames,
    evaluate,
    folder_samples,
    plot_curves,
    table,
)


def add_eval_clicks_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--davis-root", action="append", default=[], help="DAVIS-format root: first frames (repeatable)")
    p.add_argument("--images", default=None, help="a folder of images (with --masks)")
    p.add_argument("--masks", default=None, help="mask PNGs named as the images")
    p.add_argument("--out", required=True, help="folder for results.json, results.md and iou_clicks.png")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {','.join(METHODS)}")
    p.add_argument("--checkpoint", default=None, help="click model checkpoint (default: the shipped lite-clicks)")
    p.add_argument("--max-clicks", type=int, default=MAX_CLICKS, help="clicks per frame (default 10)")
    p.add_argument("--quiet", action="store_true", help="no per-frame lines")


def run_eval_clicks(args: argparse.Namespace) -> int:
    """`llb eval-clicks`: the protocol for each method on each root / folder; writes results.json, a table
    and the IoU-against-clicks plot."""
    groups: dict[str, list[Sample]] = {}
    for root in args.davis_root:
        groups[Path(root).name] = davis_first_frames(root)
    if args.images or args.masks:
        if not (args.images and args.masks):
            raise ValueError("--images and --masks go together")
        groups[Path(args.images).name] = folder_samples(args.images, args.masks)
    if not groups:
        raise ValueError("nothing to evaluate: pass --davis-root DIR and/or --images DIR --masks DIR")
    methods = build_methods([m.strip() for m in args.methods.split(",") if m.strip()], args.checkpoint)
    report = evaluate(methods, groups, args.max_clicks, None if args.quiet else print)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report["sets"] = {g: [s.name for s in samples] for g, samples in groups.items()}
    (out / "results.json").write_text(json.dumps(report, indent=1))
    text = table(report)
    (out / "results.md").write_text(text + "\n")
    curves = {m: e["overall"]["iou_curve"] for m, e in report["methods"].items()}
    plot_curves(curves, out / "iou_clicks.png", " + ".join(groups))
    print(text)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'} and {out / 'iou_clicks.png'}")
    return 0
