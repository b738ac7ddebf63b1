"""Command-line options shared by every command that runs the network (segment, eval, bench, train)."""

from __future__ import annotations

import argparse
import sys

from llb.checkpoint import UNTRAINED
from llb.config import CONFIGS, DEFAULT_CONFIG, VARIANTS
from llb.inference.crop import CropConfig, engine_crop_size
from llb.inference.int8 import check_int8
from llb.inference.session import InferenceConfig, Segmenter, resolve_device


def parse_size(text: str) -> tuple[int, int] | None:
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


def training_size(text: str) -> tuple[int, int]:
    """`WxH` -> (H, W), multiples of 16 (no `auto`: a training run has one training size)."""
    size = parse_size(text)
    if size is None:
        raise argparse.ArgumentTypeError("the training size must be given as WIDTHxHEIGHT, e.g. 432x240")
    return size


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Options that choose and place the network (shared by every command that runs it)."""
    p.add_argument("--config", choices=sorted(CONFIGS), default=None, help="network configuration (default lite)")
    p.add_argument("--variant", choices=VARIANTS, default=None, help="LLB or the JOINT-style sum baseline")
    p.add_argument("--checkpoint", default=None, help="a .safetensors checkpoint (default: the trained one)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--crop-size",
        type=parse_size,
        default="auto",
        help="processing size WxH (auto: 832x480 on GPU, 432x240 on CPU)",
    )
    p.add_argument(
        "--schedule",
        choices=("paper", "official"),
        default="paper",
        help="memory schedule: the paper's (every 5th frame) or the official tracker's (weighted, every 3rd)",
    )
    p.add_argument(
        "--fp32",
        action="store_true",
        help="no bf16 autocast (by default on where the device computes bf16 natively: recent GPUs, AMX CPUs)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="lite on the CPU: an int8 decoder, calibrated at load on the shipped example clips (opt-in; "
        "about 1.5x faster decoder, masks close to bf16's)",
    )
    p.add_argument(
        "--allow-untrained",
        action="store_true",
        help="run a network without trained weights (for development; its output is stamped as such)",
    )


def build_segmenter(args: argparse.Namespace) -> Segmenter:
    """The network the model options name, placed and configured; warns on stderr when it is untrained."""
    device = resolve_device(args.device)
    size = args.crop_size or engine_crop_size(device)
    if args.int8:  # before the weights load
        check_int8(device, args.config or DEFAULT_CONFIG)
    seg = Segmenter.from_pretrained(
        args.checkpoint,
        config=args.config,
        variant=args.variant,
        device=str(device),
        allow_untrained=args.allow_untrained,
        inference=InferenceConfig.schedule(
            args.schedule, crop=CropConfig(size=size), autocast=not args.fp32, int8=args.int8
        ),
    )
    if not seg.trained:
        print(f"WARNING: {UNTRAINED}: the {seg.model.cfg.key} network has no trained weights.", file=sys.stderr)
    return seg
