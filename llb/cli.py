"""The `llb` command line: a face over the session API; it parses, calls and saves, nothing more."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import cv2
import torch
from tqdm import tqdm

from .checkpoint import CheckpointError
from .config import CONFIGS, VARIANTS
from .inference.crop import CropConfig
from .inference.session import InferenceConfig, Segmenter
from .video.export import ResultWriter
from .video.io import VideoError, probe
from .video.masks import load_mask

UNTRAINED = "UNTRAINED NETWORK - NOT A RESULT"
CPU_SIZE = (240, 432)  # half the paper's 480x832 keeps the CPU path interactive


def _size(text: str) -> tuple[int, int] | None:
    """`WxH` -> (H, W); `auto` -> None. Both sides must be multiples of 16 (the feature stride)."""
    if text == "auto":
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 832x480") from None
    if w <= 0 or h <= 0 or w % 16 or h % 16:
        raise argparse.ArgumentTypeError(f"size {text!r}: width and height must be positive multiples of 16")
    return h, w


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return torch.device(name)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Options that choose and place the network (shared by every command that runs it)."""
    p.add_argument("--config", choices=sorted(CONFIGS), default=None, help="network configuration (default lite)")
    p.add_argument("--variant", choices=VARIANTS, default=None, help="LLB or the JOINT-style sum baseline")
    p.add_argument("--checkpoint", default=None, help="a .safetensors checkpoint (default: the trained one)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--crop-size", type=_size, default="auto", help="processing size WxH (auto: 832x480 on GPU, 432x240 on CPU)"
    )
    p.add_argument(
        "--schedule",
        choices=("paper", "official"),
        default="paper",
        help="memory schedule: the paper's (every 5th frame) or the official tracker's (weighted, every 3rd)",
    )
    p.add_argument(
        "--allow-untrained",
        action="store_true",
        help="run a network without trained weights (for development; its output is stamped as such)",
    )


def build_segmenter(args: argparse.Namespace) -> Segmenter:
    device = _device(args.device)
    size = args.crop_size or (CropConfig().size if device.type == "cuda" else CPU_SIZE)
    seg = Segmenter.from_pretrained(
        args.checkpoint,
        config=args.config,
        variant=args.variant,
        device=str(device),
        allow_untrained=args.allow_untrained,
        inference=InferenceConfig.schedule(args.schedule, crop=CropConfig(size=size)),
    )
    if not seg.trained:
        print(f"WARNING: {UNTRAINED}: the {seg.model.cfg.key} network has no trained weights.", file=sys.stderr)
    return seg


def cmd_segment(args: argparse.Namespace) -> int:
    info = probe(args.video)
    labels = load_mask(args.mask, size=(info.width, info.height))
    seg = build_segmenter(args)
    session = seg.start(args.video)
    ids = session.add_mask(args.mask_frame, labels)
    total = info.num_frames - args.mask_frame
    warning = None if seg.trained else UNTRAINED
    with ResultWriter(args.out, info.fps, warning=warning) as writer:
        bar = tqdm(session.propagate(), total=total, unit="frame", desc=f"{len(ids)} object(s)", disable=args.quiet)
        for result in bar:
            writer.write(result.frame, result.labels, result.name)
    print(f"wrote {writer.frames} masks to {args.out}/masks and {args.out}/overlay.mp4")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llb", description="LLB video object segmentation")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("segment", help="track the objects of a first-frame mask through a video")
    p.add_argument("video", help="a video file (mp4, webm, mov, avi, gif) or a folder of frames")
    p.add_argument("--mask", required=True, help="PNG of the objects on the first frame (palette or binary)")
    p.add_argument("--mask-frame", type=int, default=0, help="index of the frame the mask belongs to")
    p.add_argument("--out", required=True, help="output folder: masks/<frame>.png and overlay.mp4")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_args(p)
    p.set_defaults(func=cmd_segment)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; bad input ends with a one-line message that says what to do, not a traceback."""
    args = build_parser().parse_args(argv)
    cv2.utils.logging.setLogLevel(
        cv2.utils.logging.LOG_LEVEL_ERROR
    )  # errors only: OpenCV's probing warnings are not the user's business
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (VideoError, CheckpointError, ValueError, FileNotFoundError) as err:
        print(f"llb {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"llb {args.command}: interrupted; what was written so far is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
