"""The `llb` command line: a face over the session API; it parses, calls and saves, nothing more."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import cv2
from tqdm import tqdm

from .checkpoint import UNTRAINED, CheckpointError
from .commands.bench import add_bench_arguments, run_bench
from .commands.bench_clicks import add_bench_clicks_arguments, run_bench_clicks
from .commands.bench_train import add_bench_train_arguments, run_bench_train
from .commands.check_official import add_check_arguments, run_check
from .commands.eval import add_eval_arguments, run_eval
from .commands.eval_clicks import add_eval_clicks_arguments, run_eval_clicks
from .commands.import_official import add_import_arguments, run_import
from .commands.options import add_model_args, build_segmenter
from .commands.train import add_train_arguments, run_train
from .commands.train_clicks import add_train_clicks_arguments, run_train_clicks
from .video.export import ResultWriter
from .video.io import IMAGE_FORMATS, VIDEO_FORMATS, VideoError, iter_frames, probe
from .video.masks import load_mask


def cmd_segment(args: argparse.Namespace) -> int:
    info = probe(args.video)
    labels = load_mask(args.mask, size=(info.width, info.height))
    seg = build_segmenter(args)
    session = seg.start(args.video)
    ids = session.add_mask(args.mask_frame, labels)
    warning = None if seg.trained else UNTRAINED
    bar = tqdm(total=info.num_frames, unit="frame", desc=f"{len(ids)} object(s)", disable=args.quiet)
    earlier = []  # the frames before the mask's come first, backwards: (name, labels), a byte a pixel each
    with ResultWriter(args.out, info.fps, warning=warning) as writer:
        for result in session.track(args.mask_frame, backward_first=True):
            bar.update()
            if result.index < args.mask_frame:
                earlier.append((result.name, result.labels))
                continue
            if result.index == args.mask_frame:  # the way forwards begins: the earlier frames go first
                for frame, (name, frame_labels) in zip(iter_frames(args.video, stop=args.mask_frame), earlier[::-1]):
                    writer.write(frame, frame_labels, name)
            writer.write(result.frame, result.labels, result.name)
    bar.close()
    print(f"wrote {writer.frames} masks to {args.out}/masks and {args.out}/overlay.mp4")
    return 0


def add_segment_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", help=f"{VIDEO_FORMATS} or a folder of {IMAGE_FORMATS} frames")
    p.add_argument("--mask", required=True, help="PNG of the objects on frame --mask-frame (palette or binary)")
    p.add_argument(
        "--mask-frame", type=int, default=0, help="index of the frame the mask belongs to; tracked both ways from it"
    )
    p.add_argument("--out", required=True, help="output folder: masks/<frame>.png and overlay.mp4")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_args(p)


Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
COMMANDS: tuple[Command, ...] = (
    ("segment", "track the objects of a mask through a video, both ways", add_segment_arguments, cmd_segment),
    ("eval", "DAVIS J&F (or a YouTube-VOS submission) as the benchmarks compute it", add_eval_arguments, run_eval),
    ("train", "train a network: synthetic clips from still images, then real videos", add_train_arguments, run_train),
    (
        "eval-clicks",
        "the click protocol (IoU@k, NoC85/90) of the click backends on first frames",
        add_eval_clicks_arguments,
        run_eval_clicks,
    ),
    (
        "train-clicks",
        "train the click model: iterative simulated clicks on still images and video frames",
        add_train_clicks_arguments,
        run_train_clicks,
    ),
    ("bench", "speed and memory per stage, LLB beside the JOINT baseline", add_bench_arguments, run_bench),
    ("bench-clicks", "ms per click and per frame of the click backends", add_bench_clicks_arguments, run_bench_clicks),
    (
        "bench-train",
        "seconds per training step of the ways to train on this machine (threads, bf16, torchrun, compile)",
        add_bench_train_arguments,
        run_bench_train,
    ),
    (
        "import-official",
        "convert an official VOS-LLB or JOINT .pth.tar to .safetensors",
        add_import_arguments,
        run_import,
    ),
    ("check-official", "stage-by-stage parity with the official network on a fixture", add_check_arguments, run_check),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llb", description="LLB video object segmentation")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text, add_arguments, run in COMMANDS:
        p = sub.add_parser(name, help=help_text)
        add_arguments(p)
        p.set_defaults(func=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; bad input ends with a one-line message that says what to do, not a traceback."""
    args = build_parser().parse_args(argv)
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # OpenCV's probing warnings are noise here
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (VideoError, CheckpointError, ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"llb {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"llb {args.command}: interrupted; what was written so far is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
