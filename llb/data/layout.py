"""The DAVIS / YouTube-VOS folder layout, parsed in one place for training, evaluation and the click protocol.

A dataset folder holds `JPEGImages/<sequence>/<frame>.jpg` and `Annotations/<sequence>/<frame>.png` (label
PNGs: palette index 0 background, k object k, 255 void), each optionally under `480p/` (the official DAVIS
tools' resolution folder), and lists of sequence names in `ImageSets/[2017/|2016/]<split>.txt`. A root may
also hold that folder one level down, as the YouTube-VOS release does (`train/`, `valid/`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

RESOLUTION = "480p"  # the official DAVIS layout's subfolder; the benchmark is scored at 480p
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
LIST_FOLDERS = ("ImageSets", "ImageSets/2017", "ImageSets/2016")
GreyMasks = Literal["auto", "binary", "indexed"]


def resolution_dir(folder: Path) -> Path:
    """`folder/480p` in the official layout, else `folder` itself (flat layout)."""
    return folder / RESOLUTION if (folder / RESOLUTION).is_dir() else folder


def frame_files(folder: Path) -> list[Path]:
    """The image files of a sequence's frame folder, in name order."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)


def label_files(folder: Path) -> list[Path]:
    """The label PNGs of a sequence's annotation folder, in name order."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")


def read_labels(path: str | os.PathLike[str], grey: GreyMasks = "auto") -> np.ndarray:
    """A label PNG as (H, W) uint8 ids; palette PNGs give their indices as stored (255 = void).

    Other PNGs by `grey`: "auto" (training data) reads a grey 0/255 mask as 0/1 and other grey maps (instance
    id maps) as stored; "binary" (the click protocol's masks) thresholds grey at 128 to 0/1; "indexed" (the
    official DAVIS tool's reading, for scoring) takes grey values as stored and refuses colour images.
    """
    with Image.open(path) as image:
        if image.mode == "P":
            return np.array(image)
        if grey == "indexed":
            if image.mode not in ("L", "1"):
                raise ValueError(
                    f"{path} is a {image.mode} image; masks must be indexed PNGs (palette or grey, one index per "
                    "object), as DAVIS annotations are"
                )
            return np.array(image, dtype=np.uint8)
        values = np.array(image.convert("L"))
    if grey == "binary":
        return (values >= 128).astype(np.uint8)
    present = np.unique(values)
    if present.max(initial=0) > 127 and np.isin(present, (0, 255)).all():
        return (values >= 128).astype(np.uint8)
    return values


def read_names(path: Path) -> list[str]:
    """Sequence names of a list file: the first word of each line, each once, in order."""
    names = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class DavisSequence:
    """One sequence of a dataset folder: its frame folder and its annotation folder."""

    name: str
    frames: Path
    annotations: Path


@dataclass(frozen=True)
class Layout:
    """Where a dataset folder keeps its frames, annotations and split lists."""

    root: Path  # the folder as given
    base: Path  # the folder holding JPEGImages/, Annotations/ and ImageSets/
    images: Path  # JPEGImages[/480p]
    annotations: Path  # Annotations[/480p]

    @classmethod
    def find(cls, root: str | os.PathLike[str], subsets: Iterable[str] = ()) -> Layout:
        """The layout of `root`, or of its first subfolder in `subsets` (e.g. "train", "valid") that holds one."""
        root = Path(root)
        candidates = [root, *(root / s for s in subsets)]
        for base in candidates:
            if (base / "JPEGImages").is_dir() and (base / "Annotations").is_dir():
                images, annotations = base / "JPEGImages", base / "Annotations"
                return cls(root, base, resolution_dir(images), resolution_dir(annotations))
        where = " or in ".join(str(c) for c in candidates)
        raise FileNotFoundError(
            f"{root} is not a DAVIS / YouTube-VOS dataset: expected JPEGImages/<sequence>/ (or JPEGImages/480p/) "
            f"and Annotations/<sequence>/ with label PNGs in {where}"
        )

    def split_file(self, split: str) -> Path | None:
        """The list of `split` under ImageSets/ (ImageSets/<split>.txt, then 2017/, then 2016/), or None."""
        return next((p for p in (self.base / d / f"{split}.txt" for d in LIST_FOLDERS) if p.is_file()), None)

    def names(self) -> list[str]:
        """Every sequence with an annotation folder, in name order."""
        return sorted(p.name for p in self.annotations.iterdir() if p.is_dir() and not p.name.startswith("."))

    def sequences(self, names: Sequence[str] | None = None) -> list[DavisSequence]:
        """The named sequences (default: every annotated one); each must have its frame and annotation folder."""
        sequences = []
        for name in self.names() if names is None else names:
            seq = DavisSequence(name, self.images / name, self.annotations / name)
            missing = [p for p in (seq.frames, seq.annotations) if not p.is_dir()]
            if missing:
                raise FileNotFoundError(f"sequence {name!r} of {self.root} has no folder {missing[0]}")
            sequences.append(seq)
        return sequences
