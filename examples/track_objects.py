"""Track the objects of a first-frame mask through a video with the Python API, and save the masks as DAVIS
palette PNGs and an overlay per frame.

    python examples/track_objects.py VIDEO MASK.png OUT [--variant joint] [--frames 20]

VIDEO is a video file or a folder of frames; MASK.png holds the object ids of the video's first frame.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from llb import Segmenter, load_mask, overlay, save_palette_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", help="video file or folder of frames")
    parser.add_argument("mask", help="PNG of object ids on the first frame")
    parser.add_argument("out", type=Path, help="folder for the masks and overlays")
    parser.add_argument("--variant", default="llb", choices=("llb", "joint"))
    parser.add_argument("--frames", type=int, default=None, help="stop after this many frames")
    args = parser.parse_args()

    session = Segmenter.from_pretrained(variant=args.variant).start(args.video)
    ids = session.add_mask(0, load_mask(args.mask))
    args.out.mkdir(parents=True, exist_ok=True)
    for result in session.propagate(stop=args.frames):
        save_palette_png(args.out / f"{result.name}.png", result.labels)
        Image.fromarray(overlay(result.frame, result.labels)).save(args.out / f"{result.name}.jpg", quality=90)
        areas = ", ".join(f"object {i}: {(result.labels == i).mean():.1%}" for i in ids)
        print(f"frame {result.index}: {areas}")


if __name__ == "__main__":
    main()
