"""Track the objects of a first-frame mask through a video with the Python API, and save the masks as DAVIS
palette PNGs (OUT/masks/) and the overlay video (OUT/overlay.mp4) as the frames stream.

    python examples/track_objects.py VIDEO MASK.png OUT [--variant joint] [--frames 20]

VIDEO is a video file or a folder of frames; MASK.png holds the object ids of the video's first frame.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llb import ResultWriter, Segmenter, load_mask, probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", help="video file or folder of frames")
    parser.add_argument("mask", help="PNG of object ids on the first frame")
    parser.add_argument("out", type=Path, help="folder for masks/ and overlay.mp4")
    parser.add_argument("--variant", default="llb", choices=("llb", "joint"))
    parser.add_argument("--frames", type=int, default=None, help="stop after this many frames")
    args = parser.parse_args()

    session = Segmenter.from_pretrained(variant=args.variant).start(args.video)
    ids = session.add_mask(0, load_mask(args.mask))
    with ResultWriter(args.out, probe(args.video).fps) as writer:  # writes on its own thread while tracking goes on
        for result in session.propagate(stop=args.frames):
            writer.write(result.frame, result.labels, result.name)
            areas = ", ".join(f"object {i}: {(result.labels == i).mean():.1%}" for i in ids)
            print(f"frame {result.index}: {areas}")


if __name__ == "__main__":
    main()
