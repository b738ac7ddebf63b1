"""A propagation's results: one file per frame (the label map and the merged probabilities, at the processed
size), written as the frames stream, and what the exporter makes from them at the source video's resolution:
the overlay video and the cut-out video (with the source's sound), the zip of masks, the transparent cut-out
(WebM and RGBA PNGs); the gate maps and the comparison of two runs."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from llb.video.export import TRANSPARENT, Archive, CutoutVideo, Exporter, Frame, OverlayVideo, Sink, stamp
from llb.video.io import add_audio, iter_frames

from .clip import Clip
from .settings import UNTRAINED


@dataclass
class RunResult:
    """The frames of one run of one network (`variant`), kept in `folder` as `<frame>.npz`: the label map
    (h, w) uint8 and, when given, the merged probabilities (K, h, w) quantised to uint8 with their object ids,
    so that an export at another size takes the argmax of upsampled probabilities instead of stretched labels.
    A sink of the exporter; `gates[frame][id]` holds the AFM's transduction and induction gates per channel
    (2, D, h, w) float16 when the network has an AFM."""

    variant: str
    folder: Path
    trained: bool
    device: str = ""
    fps: float = 0.0
    stopped: bool = False
    gates: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path, variant: str, trained: bool, device: str) -> RunResult:
        """A new run, empty, in a fresh folder under `root`."""
        folder = root / f"run-{variant}-{time.time_ns()}"
        folder.mkdir(parents=True)
        return cls(variant, folder, trained, device=device)

    def path(self, frame: int) -> Path:
        return self.folder / f"{frame:05d}.npz"

    def save(
        self, frame: int, labels: np.ndarray, probs: np.ndarray | None = None, ids: list[int] | None = None
    ) -> None:
        """labels (h, w) uint8; probs: the merged probabilities (K, h, w) of objects `ids`."""
        arrays = {"labels": np.asarray(labels, np.uint8)}
        if probs is not None and ids is not None:
            arrays["probs"] = np.clip(np.rint(np.asarray(probs, np.float32) * 255), 0, 255).astype(np.uint8)
            arrays["ids"] = np.asarray(ids, np.uint8)
        np.savez_compressed(self.path(frame), **arrays)

    def write(self, frame: Frame) -> None:
        """The exporter's sink: frames are named by their index."""
        self.save(int(frame.name), frame.labels, frame.probs, frame.ids)

    def close(self, ok: bool) -> None:
        """Every frame saved is whole and kept (a stopped run keeps what it did)."""

    def copy_before(self, other: RunResult, stop: int) -> None:
        """Take the frames before `stop` from another run: masks, probabilities and gate maps."""
        for frame in (f for f in other.frames() if f < stop):
            shutil.copy(other.path(frame), self.path(frame))
        self.gates.update({k: v for k, v in other.gates.items() if k < stop})

    def labels(self, frame: int) -> np.ndarray | None:
        """Frame `frame`'s label map (h, w) uint8, or None when the run has none there."""
        if not self.path(frame).is_file():
            return None
        with np.load(self.path(frame)) as saved:
            return saved["labels"]

    def labels_at(self, frame: int, size: tuple[int, int]) -> np.ndarray:
        """Frame `frame`'s label map at `size` (width, height): the argmax of the merged probabilities upsampled
        bilinearly (smooth borders, no staircase), or nearest-neighbour labels for a frame saved without them."""
        with np.load(self.path(frame)) as saved:
            labels = saved["labels"]
            if labels.shape[::-1] == tuple(size):
                return labels
            if "probs" not in saved:
                return cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
            probs, ids = saved["probs"], [int(i) for i in saved["ids"]]
        up = [cv2.resize(p, size, interpolation=cv2.INTER_LINEAR).astype(np.int16) for p in probs]
        best = np.maximum(255 - sum(up), 0)  # the background, in 1/255 steps as saved
        labels = np.zeros(best.shape, np.uint8)
        for object_id, prob in zip(ids, up, strict=True):  # argmax over background and objects, ties to the first
            labels[prob > best] = object_id
            np.maximum(best, prob, out=best)
        return labels

    def frames(self) -> list[int]:
        return sorted(int(p.stem) for p in self.folder.glob("*.npz"))

    @property
    def warning(self) -> str | None:
        return None if self.trained else UNTRAINED


def source_frames(clip: Clip, frames: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(index, RGB frame at the source's resolution) for each of `frames`, read from the kept upload; the
    processed frames where the clip has no upload kept."""
    if clip.original is None or clip.original_size is None:
        yield from ((i, clip.frame(i)) for i in frames)
        return
    wanted = set(frames)
    width, height = clip.original_size
    for index, rgb in enumerate(iter_frames(clip.original, stop=max(frames) + 1)):
        if index in wanted:
            if rgb.shape[:2] != (height, width):  # a rotated or oddly sized frame, as in prepare_clip
                rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
            yield index, rgb


def render(result: RunResult, clip: Clip, out_dir: Path, cutout_mode: str = "none") -> dict[str, Path | None]:
    """Overlay video, optional cut-out video (or transparent WebM and a zip of RGBA PNGs) and the masks zip of the
    frames that have masks, at the source video's resolution, streamed from the run's frames through the
    exporter; the videos carry the source's sound when the frames are consecutive.

    Names carry a fresh suffix so that a browser never shows a cached older video."""
    frames = result.frames()
    if not frames:
        raise ValueError("no frame was tracked: run again and let it finish a frame before stopping")
    tag = f"{result.variant}-{uuid.uuid4().hex[:8]}"
    suffix = "-UNTRAINED" if result.warning else ""
    size = clip.original_size or (clip.width, clip.height)
    note = f"{UNTRAINED}: these masks come from a network without trained weights.\n" if result.warning else ""
    readme = (
        f"{note}DAVIS palette PNGs, one per frame of {clip.source}, at {size[0]}x{size[1]} (processed at "
        f"{clip.width}x{clip.height}; upsampled from the merged probabilities); 0 is background.\n"
    )
    paths: dict[str, Path | None] = {"overlay": out_dir / f"overlay-{tag}.mp4", "cutout": None, "alpha": None}
    paths["zip"] = out_dir / f"masks-{tag}{suffix}.zip"
    sinks: list[Sink] = [OverlayVideo(paths["overlay"], clip.fps, result.warning), Archive(paths["zip"], readme=readme)]
    if cutout_mode != "none":
        transparent = cutout_mode == TRANSPARENT
        paths["cutout"] = out_dir / f"cutout-{tag}.{'webm' if transparent else 'mp4'}"
        paths["alpha"] = out_dir / f"cutout-{tag}{suffix}-rgba.zip" if transparent else None
        sinks.append(CutoutVideo(paths["cutout"], cutout_mode, clip.fps, result.warning, paths["alpha"]))
    with Exporter(sinks) as exporter:
        for index, rgb in source_frames(clip, frames):
            exporter.write(rgb, result.labels_at(index, size), f"{index:05d}")
    if clip.original is not None and frames == list(range(frames[0], frames[-1] + 1)):
        for path in (paths["overlay"], paths["cutout"]):
            if path is not None:
                add_audio(path, clip.original, frames[0] / clip.fps, len(frames) / clip.fps)
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


GATE_BRANCHES = ("transduction", "induction")
MOST_VARIED = "the channel that varies most over pixels"
CHANNEL_MEAN = "the mean over channels"
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_NO_GATES = (200, 200, 200)  # frames without gates (given masks, frames not tracked) in the channel view


def gate_means(result: RunResult) -> list[tuple[int, str, float]]:
    """(frame, branch, mean gate over the objects) for a line plot of each branch's share per frame."""
    rows = []
    for index in sorted(result.gates):
        maps = np.stack(list(result.gates[index].values()))  # (K, 2, D, h, w)
        for branch, gate in zip(GATE_BRANCHES, maps.swapaxes(0, 1), strict=True):
            rows.append((index, branch, float(gate.mean(dtype=np.float32))))
    return rows


def gate_channel_count(result: RunResult) -> int:
    """D, the channels of the run's gates (0 for a run without gates)."""
    first = next((maps for frame in result.gates.values() for maps in frame.values()), None)
    return 0 if first is None else first.shape[1]


def gate_choices(result: RunResult) -> list[str]:
    """What the heat maps can show: the most varying channel (the default), the mean, or channel 0..D-1."""
    return [MOST_VARIED, CHANNEL_MEAN, *(f"channel {c}" for c in range(gate_channel_count(result)))]


def _shown_channel(gate: np.ndarray, shown: str) -> tuple[np.ndarray, str]:
    """The map (h, w) that `shown` picks from one branch's gates (D, h, w), and what it is, in words."""
    gate = gate.astype(np.float32)
    if shown == CHANNEL_MEAN:
        return gate.mean(0), f"mean of {len(gate)} channels"
    if shown == MOST_VARIED:
        channel = int(gate.reshape(len(gate), -1).std(1).argmax())
        return gate[channel], f"channel {channel} (most varied)"
    channel = int(shown.removeprefix("channel "))
    return gate[channel], f"channel {channel}"


def _fit(name: str, rest: str, width: int, scale: float = 0.45) -> str:
    """`name + rest`, the name cut short (ending in "..") where the text would be wider than `width` pixels."""
    cut = len(name)
    while cut > 1 and cv2.getTextSize(name[:cut] + rest, _FONT, scale, 1)[0][0] > width:
        cut -= 1
    return name + rest if cut == len(name) else name[: max(1, cut - 2)] + ".." + rest


def _label(image: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.45) -> None:
    """White text with a black outline, readable on any colour of the scale (and on white)."""
    cv2.putText(image, text, org, _FONT, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, org, _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)


def _viridis(values: np.ndarray) -> np.ndarray:
    """Gate values in 0..1 (any shape) as RGB (..., 3) uint8 on the fixed 0..1 viridis scale."""
    grey = np.clip(np.rint(np.asarray(values, np.float32) * 255), 0, 255).astype(np.uint8)
    return cv2.applyColorMap(grey.reshape(grey.shape[0], -1), cv2.COLORMAP_VIRIDIS)[..., ::-1].reshape(*grey.shape, 3)


def gate_heatmaps(
    result: RunResult, index: int, names: dict[int, str], shown: str = MOST_VARIED, width: int = 320
) -> np.ndarray | None:
    """Heat maps of frame `index`: one row per object, transduction gate left, induction gate right (viridis,
    fixed 0 dark to 1 bright), in the object's search region. `shown` (one of `gate_choices`) picks per map the
    channel whose gate varies most over pixels (where any spatial structure is), the mean over channels, or one
    channel; each map's caption says which channel it shows and its range."""
    maps = result.gates.get(index)
    if not maps:
        return None
    if shown not in gate_choices(result):
        last = gate_channel_count(result) - 1
        raise ValueError(f"the heat maps show {MOST_VARIED}, {CHANNEL_MEAN} or a channel 0..{last}")
    rows = []
    for object_id, gates in sorted(maps.items()):
        h, w = gates.shape[2:]
        size = (width, max(1, round(width * h / w)))
        tiles = []
        for branch, gate in zip(GATE_BRANCHES, gates, strict=True):
            picked, what = _shown_channel(gate, shown)
            tile = cv2.resize(_viridis(picked), size, interpolation=cv2.INTER_NEAREST)
            _label(tile, _fit(str(names.get(object_id, object_id)), f": {branch} gate", width - 12), (6, 18))
            _label(tile, f"{what}: {picked.min():.2f}-{picked.max():.2f}", (6, 38))
            tiles.append(tile)
        rows.append(np.hstack([tiles[0], np.full((size[1], 6, 3), 255, np.uint8), tiles[1]]))
    out = np.vstack(rows)
    return stamp(out, result.warning) if result.warning else out


def gate_channels(result: RunResult, names: dict[int, str], width: int = 320, row: int = 5) -> np.ndarray | None:
    """The gates' channel selection over the video: per object, for each branch (transduction left, induction
    right), D rows (channel 0 at the top) by frames (columns, left to right), each cell the channel's mean gate
    over the search region on that frame, on the heat maps' fixed 0..1 scale; light grey where a frame has no
    gates (a given mask, or a frame not tracked). Each panel is `width` wide (wider for more frames than
    pixels: every frame keeps a column), `row` pixels a channel."""
    if not result.gates:
        return None
    first, last = min(result.gates), max(result.gates)
    objects = sorted({i for maps in result.gates.values() for i in maps})
    channels = gate_channel_count(result)
    left, top, bottom = 30, 26, 30  # margins: channel numbers, title, frame axis
    grid = (max(width - left - 4, last - first + 1), channels * row)  # (w, h) of the cells
    width = left + grid[0] + 4
    blocks = []
    for object_id in objects:
        panels = []
        for b, branch in enumerate(GATE_BRANCHES):
            cells = np.full((channels, last - first + 1, 3), _NO_GATES, np.uint8)
            for index, maps in result.gates.items():
                if object_id in maps:
                    cells[:, index - first] = _viridis(maps[object_id][b].mean((1, 2), dtype=np.float32))
            panel = np.full((top + grid[1] + bottom, width, 3), 255, np.uint8)
            panel[top : top + grid[1], left : left + grid[0]] = cv2.resize(cells, grid, interpolation=cv2.INTER_NEAREST)
            _axis_labels(panel, (left, top), grid, channels, (first, last))
            title = _fit(str(names.get(object_id, object_id)), f": {branch} gate", width - 8)
            cv2.putText(panel, title, (4, 17), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
            panels.append(panel)
        blocks.append(np.hstack([panels[0], np.full((panels[0].shape[0], 6, 3), 255, np.uint8), panels[1]]))
    out = np.vstack(blocks)
    return stamp(out, result.warning) if result.warning else out


def _axis_labels(
    panel: np.ndarray, origin: tuple[int, int], grid: tuple[int, int], channels: int, frames: tuple[int, int]
) -> None:
    """Channel numbers left of the grid at `origin` (x, y) of size `grid` (w, h), frame numbers under it."""
    (x0, y0), (gw, gh), (first, last) = origin, grid, frames
    black = (0, 0, 0)
    for c in sorted({0, *range(8, channels - 4, 8), channels - 1}):
        y = y0 + round((c + 0.5) * gh / channels)
        cv2.putText(panel, str(c), (2, y + 4), _FONT, 0.35, black, 1, cv2.LINE_AA)
        cv2.line(panel, (x0 - 4, y), (x0 - 1, y), black, 1)
    count = last - first + 1
    step = 10 * max(1, count // 60)
    kept: list[int] = []
    for frame in [first, last, *range(first - first % step + step, last, step)]:  # the ends first
        x = x0 + round((frame - first + 0.5) * gw / count)
        if all(abs(x - k) >= 24 for k in kept):  # numbers never overlap
            kept.append(x)
            text = str(frame)
            (tw, _), _ = cv2.getTextSize(text, _FONT, 0.35, 1)
            cv2.line(panel, (x, y0 + gh), (x, y0 + gh + 3), black, 1)
            org = (min(max(0, x - tw // 2), panel.shape[1] - tw), y0 + gh + 14)
            cv2.putText(panel, text, org, _FONT, 0.35, black, 1, cv2.LINE_AA)
    (tw, _), _ = cv2.getTextSize("frame", _FONT, 0.4, 1)
    cv2.putText(panel, "frame", (x0 + (gw - tw) // 2, y0 + gh + 27), _FONT, 0.4, black, 1, cv2.LINE_AA)
