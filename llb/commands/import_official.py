"""`llb import-official`: convert an official VOS-LLB or JOINT checkpoint (llb.official) and print the
importer's report and where the checkpoint went."""

from __future__ import annotations

import argparse
from pathlib import Path

from llb.official import import_official


def _safetensors_path(text: str) -> Path:
    """argparse type of --out: a path ending in .safetensors."""
    if not text.endswith(".safetensors"):
        raise argparse.ArgumentTypeError(f"{text!r}: the output must be a .safetensors file")
    return Path(text)


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `llb import-official`."""
    parser.add_argument("checkpoint", type=Path, help="official checkpoint (.pth.tar) of VOS-LLB or JOINT")
    parser.add_argument(
        "--out", required=True, type=_safetensors_path, help="our checkpoint to write (FILE.safetensors)"
    )


def run_import(args: argparse.Namespace) -> int:
    """`llb import-official`: convert, print the report and where the checkpoint went; 0 on success (an
    unusable checkpoint raises OfficialImportError, a ValueError)."""
    report = import_official(args.checkpoint, args.out)
    print(f"read {args.checkpoint}")
    print(report.summary())
    print(f"wrote {args.out} ({report.config.key})")
    print(f"segment with it: llb segment VIDEO --mask MASK.png --out DIR --config paper --checkpoint {args.out}")
    return 0
