"""`llb eval`: DAVIS J&F of the engine or of saved masks (llb.evaluation.davis), or a YouTube-VOS submission
(llb.evaluation.ytvos); this module parses the options, calls the library and prints."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from llb.checkpoint import UNTRAINED
from llb.evaluation.davis import davis_sequences, evaluate_davis, fingerprint
from llb.evaluation.ytvos import submit_ytvos, video_folders
from llb.inference.session import Segmenter

from .options import add_model_args, build_segmenter


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `llb eval` (model options included)."""
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--davis-root", help="DAVIS-format root: JPEGImages/[480p/]<seq>, Annotations/[480p/]<seq>")
    data.add_argument("--ytvos-root", help="YouTube-VOS split folder (JPEGImages/, Annotations/) or its parent")
    parser.add_argument(
        "--split", default=None, help="DAVIS: a name under ImageSets (default val, else every sequence) or a list file"
    )
    parser.add_argument(
        "--predictions", default=None, help="DAVIS: score this folder of <seq>/<frame>.png masks instead of running"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output folder (DAVIS: required; masks/, results.json, CSV tables, cache/; YouTube-VOS: the masks, "
        "default beside the zip)",
    )
    parser.add_argument("--submission", default=None, help="YouTube-VOS: the submission zip to write")
    parser.add_argument("--save-overlays", action="store_true", help="an H.264 overlay per sequence in OUT/overlays/")
    parser.add_argument("--plot", action="store_true", help="DAVIS: a per-frame J plot per sequence in OUT/plots/")
    parser.add_argument(
        "--max-frames",
        type=int,
        default=None,
        metavar="N",
        help="development: only the first N frames of each sequence (not a benchmark number)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_args(parser)


def _check_args(args: argparse.Namespace) -> None:
    """Options that belong to the other benchmark or contradict each other; ValueError says which."""
    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError(f"--max-frames must be at least 1, got {args.max_frames}")
    if args.davis_root is not None:
        if args.out is None:
            raise ValueError("--out DIR is required: the masks, tables and results.json go there")
        if args.submission is not None:
            raise ValueError("--submission is for --ytvos-root; DAVIS results go to --out")
        return
    for option, value in (("--split", args.split), ("--predictions", args.predictions), ("--plot", args.plot)):
        if value not in (None, False):
            raise ValueError(f"{option} needs DAVIS ground truth (--davis-root); YouTube-VOS is scored by its server")
    if args.submission is None:
        raise ValueError("--ytvos-root needs --submission OUT.zip, the file to upload to the benchmark")


def segmenter(args: argparse.Namespace) -> tuple[Segmenter, str | None]:
    """The network of the model options, and the warning its output must carry when it is untrained."""
    seg = build_segmenter(args)
    return seg, None if seg.trained else UNTRAINED


def print_summary(summary: dict[str, Any], out: Path) -> None:
    """The J&F, J and F table per sequence and over all objects."""
    width = max(len("Global"), *(len(name) for name in summary["sequences"]))
    print(f"{'sequence':<{width}}  {'J&F':>5}  {'J':>5}  {'F':>5}")
    for name, s in summary["sequences"].items():
        print(f"{name:<{width}}  {s['J&F-Mean']:5.1f}  {s['J-Mean']:5.1f}  {s['F-Mean']:5.1f}")
    print(f"{'Global':<{width}}  {summary['J&F']:5.1f}  {summary['J']:5.1f}  {summary['F']:5.1f}")
    print(f"({summary['num_objects']} objects; tables and results.json in {out})")


def run_davis(args: argparse.Namespace) -> int:
    """Score --predictions, or track every sequence with the model options' network (cached by its settings)."""
    sequences = davis_sequences(args.davis_root, args.split)
    out = Path(args.out)
    seg, key, warning = None, None, None
    if args.predictions is None:
        seg, warning = segmenter(args)
        key = fingerprint(seg, args.checkpoint, args.max_frames)
    result = evaluate_davis(
        seg,
        sequences,
        out,
        predictions=args.predictions,
        max_frames=args.max_frames,
        cache_key=key,
        overlays=args.save_overlays,
        plots=args.plot,
        warning=warning,
        quiet=args.quiet,
    )
    if result.cached:
        print(f"{result.cached} of {len(sequences)} sequence(s) came from the cache in {out / 'cache'}")
    print_summary(result.summary, out)
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
    return 0


def run_ytvos(args: argparse.Namespace) -> int:
    """Segment every video of the split and write the submission zip (masks kept in --out or beside the zip)."""
    videos = video_folders(args.ytvos_root)
    submission = Path(args.submission)
    out = Path(args.out) if args.out else submission.with_suffix("")
    seg, warning = segmenter(args)
    result = submit_ytvos(
        seg,
        videos,
        submission,
        out,
        max_frames=args.max_frames,
        cache_key=fingerprint(seg, args.checkpoint, args.max_frames),
        overlays=args.save_overlays,
        warning=warning,
        quiet=args.quiet,
    )
    if result.cached:
        print(f"{result.cached} of {result.videos} video(s) came from the cache in {out / 'cache'}")
    print(f"wrote {result.masks} masks of {result.videos} videos to {submission} (masks also in {out / 'Annotations'})")
    if warning:
        print(f"WARNING: {warning}: do not submit these masks as a result", file=sys.stderr)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """`llb eval`: DAVIS scoring (running the engine or of --predictions), or a YouTube-VOS submission."""
    _check_args(args)
    return run_davis(args) if args.davis_root is not None else run_ytvos(args)
