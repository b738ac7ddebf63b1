"""A propagation's results on disk (one palette PNG per frame) and what is made from them: the overlay
video, the cut-out video, the zip of masks, the gate maps and the comparison of two runs."""

from __future__ import annotations

import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from llb.video.export import stamp
from llb.video.io import VideoWriter
from llb.video.masks import overlay, save_palette_png

from .clip import Clip
from .settings import UNTRAINED

CUTOUTS = ("none", "remove background", "blur background")


@dataclass
class RunResult:
    """Masks of one run of one network (`variant`) in `folder`; `gates[frame][id]` holds the AFM's mean
    transduction and induction gate maps (2, h, w) when the network has an AFM."""

    variant: str
    folder: Path
    trained: bool
    device: str = ""
    fps: float = 0.0
    stopped: bool = False
    gates: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)

    def path(self, frame: int) -> Path:
        return self.folder / f"{frame:05d}.png"

    def labels(self, frame: int) -> np.ndarray | None:
        path = self.path(frame)
        return np.array(Image.open(path)) if path.is_file() else None

    def save(self, frame: int, labels: np.ndarray) -> None:
        save_palette_png(self.path(frame), labels)

    def frames(self) -> list[int]:
        return sorted(int(p.stem) for p in self.folder.glob("*.png"))

    @property
    def warning(self) -> str | None:
        return None if self.trained else UNTRAINED


def shown(frame: np.ndarray, labels: np.ndarray, warning: str | None) -> np.ndarray:
    """The overlay of one frame as the person sees it (stamped for an untrained network)."""
    out = overlay(frame, labels)
    return stamp(out, warning) if warning else out


def cutout(frame: np.ndarray, labels: np.ndarray, mode: str) -> np.ndarray:
    """The objects on a black or blurred background."""
    keep = (labels > 0)[..., None]
    if mode == "blur background":
        k = max(3, (min(frame.shape[:2]) // 20) | 1)
        background = cv2.GaussianBlur(frame, (k, k), 0)
    else:
        background = np.zeros_like(frame)
    return np.where(keep, frame, background)


def render(result: RunResult, clip: Clip, out_dir: Path, cutout_mode: str = "none") -> dict[str, Path | None]:
    """Overlay video, optional cut-out video and the masks zip of the frames that have masks.

    Names carry a fresh suffix so that a browser never shows a cached older video."""
    frames = result.frames()
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{result.variant}-{uuid.uuid4().hex[:8]}"
    paths: dict[str, Path | None] = {"overlay": out_dir / f"overlay-{tag}.mp4", "cutout": None, "zip": None}
    writers = [VideoWriter(paths["overlay"], clip.fps)]
    if cutout_mode != "none":
        paths["cutout"] = out_dir / f"cutout-{tag}.mp4"
        writers.append(VideoWriter(paths["cutout"], clip.fps))
    for index in frames:
        rgb, labels = clip.frame(index), result.labels(index)
        writers[0].write(shown(rgb, labels, result.warning))
        if len(writers) > 1:
            cut = cutout(rgb, labels, cutout_mode)
            writers[1].write(stamp(cut, result.warning) if result.warning else cut)
    for writer in writers:
        writer.close()
    suffix = "-UNTRAINED" if result.warning else ""
    paths["zip"] = out_dir / f"masks-{tag}{suffix}.zip"
    with zipfile.ZipFile(paths["zip"], "w", zipfile.ZIP_STORED) as zf:
        for index in frames:
            zf.write(result.path(index), f"masks/{index:05d}.png")
        note = f"{UNTRAINED}: these masks come from a network without trained weights.\n" if result.warning else ""
        zf.writestr("README.txt", f"{note}DAVIS palette PNGs, one per frame of {clip.source}; 0 is background.\n")
    return paths


def disagreement(a: RunResult, b: RunResult) -> list[tuple[int, float]]:
    """Per frame, 1 - the mean IoU of the objects' masks between two runs (0: identical)."""
    rows = []
    for index in sorted(set(a.frames()) & set(b.frames())):
        la, lb = a.labels(index), b.labels(index)
        ids = sorted(set(np.unique(la)) | set(np.unique(lb)) - {0})
        ious = []
        for i in ids:
            union = np.count_nonzero((la == i) | (lb == i))
            ious.append(np.count_nonzero((la == i) & (lb == i)) / union if union else 1.0)
        rows.append((index, 1.0 - float(np.mean(ious)) if ious else 0.0))
    return rows


def gate_means(result: RunResult) -> list[tuple[int, str, float]]:
    """(frame, branch, mean gate over the objects) for a line plot of each branch's share per frame."""
    rows = []
    for index in sorted(result.gates):
        maps = np.stack(list(result.gates[index].values()))  # (K, 2, h, w)
        rows.append((index, "transduction", float(maps[:, 0].mean())))
        rows.append((index, "induction", float(maps[:, 1].mean())))
    return rows


def gate_heatmaps(result: RunResult, index: int, names: dict[int, str], width: int = 320) -> np.ndarray | None:
    """Heat maps of frame `index`: one row per object, transduction gate left, induction gate right
    (viridis, 0 dark to 1 bright), in the object's search region."""
    maps = result.gates.get(index)
    if not maps:
        return None
    rows = []
    for object_id, gates in sorted(maps.items()):
        h, w = gates.shape[1:]
        size = (width, max(1, round(width * h / w)))
        tiles = []
        for branch, gate in zip(("transduction", "induction"), gates, strict=True):
            tile = cv2.applyColorMap(np.clip(gate * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
            tile = cv2.resize(tile, size, interpolation=cv2.INTER_NEAREST)[..., ::-1].copy()
            text = f"{names.get(object_id, object_id)}: {branch} {gate.mean():.2f}"
            cv2.putText(tile, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(tile)
        rows.append(np.hstack([tiles[0], np.full((size[1], 6, 3), 255, np.uint8), tiles[1]]))
    out = np.vstack(rows)
    return stamp(out, result.warning) if result.warning else out
