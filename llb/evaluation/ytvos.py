"""A YouTube-VOS submission zip (`llb eval --ytvos-root`), `Annotations/<video>/<frame>.png` for every frame.

YouTube-VOS gives each object's mask on the frame where it first appears, which may be a later frame: an
annotation file introduces the objects it holds that were not given before (ids already given are left out
there, as the benchmark's annotation is not exhaustive), and each object is tracked from its own first frame.
A mask is written for every frame of `JPEGImages/<video>` (frames before the first annotation are empty); the
benchmark's server scores the zip. Finished videos are cached like DAVIS sequences, so a run resumes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from llb.data.layout import DavisSequence, Layout, label_files, read_labels
from llb.evaluation.davis import load_cache, save_cache
from llb.inference.session import Segmenter
from llb.video.export import Archive, Exporter, OverlayVideo, PaletteFolder, Sink
from llb.video.io import iter_frames, probe
from llb.video.masks import VOID, object_ids


def video_folders(root: str | os.PathLike[str]) -> list[DavisSequence]:
    """The annotated videos of a YouTube-VOS split folder (or of its `valid/`, the release layout), in name
    order; each must have its frame folder."""
    videos = Layout.find(root, ("valid",)).sequences()
    if not videos:
        raise ValueError(f"no videos with annotations under {root}")
    return videos


def first_masks(annotations: Path, frame_names: tuple[str, ...]) -> dict[int, np.ndarray]:
    """Label maps per frame index holding only the objects that appear there for the first time."""
    index = {name: i for i, name in enumerate(frame_names)}
    files = label_files(annotations)
    for path in files:
        if path.stem not in index:
            raise FileNotFoundError(f"the annotation {path} has no frame of that name")
    seen: set[int] = set()
    prompts = {}
    for path in sorted(files, key=lambda p: index[p.stem]):
        labels = read_labels(path, "indexed")
        labels[labels == VOID] = 0
        labels[np.isin(labels, list(seen))] = 0
        ids = object_ids(labels)
        if ids:
            prompts[index[path.stem]] = labels
            seen.update(ids)
    if not prompts:
        raise ValueError(f"{annotations} holds no object mask")
    return prompts


def segment_video(
    seg: Segmenter,
    frames: Path,
    annotations: Path,
    sinks: Sequence[Sink],
    max_frames: int | None = None,
    quiet: bool = False,
) -> int:
    """Track every object from its first mask; every frame's mask goes to the exporter's `sinks` as it comes
    (frames before the first mask are empty). Returns the count.

    On a frame that introduces objects their given masks are written as they are (over the tracked objects),
    as the benchmark's first-appearance frames carry the ground truth.
    """
    info = probe(frames)
    stop = info.num_frames if max_frames is None else min(max_frames, info.num_frames)
    prompts = first_masks(annotations, info.frame_names)
    start = min(prompts)
    session = seg.start(frames)
    for index, labels in prompts.items():
        if index < stop:
            session.add_mask(index, labels)
    with Exporter(sinks) as exporter:
        empty = np.zeros((info.height, info.width), dtype=np.uint8)
        for name, rgb in zip(info.frame_names, iter_frames(frames, stop=min(start, stop))):
            exporter.write(rgb, empty, name)
        stream = session.propagate(stop=stop) if start < stop else ()
        bar = tqdm(stream, total=max(stop - start, 0), desc=frames.name, unit="frame", leave=False, disable=quiet)
        for result in bar:
            given = prompts.get(result.index)
            labels = result.labels if given is None else np.where(given > 0, given, result.labels).astype(np.uint8)
            exporter.write(result.frame, labels, result.name)
    return exporter.frames


@dataclass
class Submission:
    """What `submit_ytvos` wrote: the masks in the zip, the videos, and how many came from the cache."""

    masks: int
    videos: int
    cached: int = 0


def submit_ytvos(
    segmenter: Segmenter,
    videos: Sequence[DavisSequence],
    submission: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    max_frames: int | None = None,
    cache_key: str | None = None,
    overlays: bool = False,
    warning: str | None = None,
    quiet: bool = True,
) -> Submission:
    """Segment every video (masks to `out/Annotations/<video>/`), zipped into the submission file as they stream.

    With a `cache_key` (`fingerprint` of the run's settings) finished videos are cached in `out/cache/` and
    not tracked again; with `overlays` an H.264 overlay per video goes to `out/overlays/` (stamped with
    `warning`).
    """
    out = Path(out)
    cached = 0
    archive = Archive(Path(submission), deflate=True)
    try:
        for video in tqdm(videos, desc="YouTube-VOS", unit="video", disable=quiet):
            masks, folder = out / "Annotations" / video.name, f"Annotations/{video.name}"
            cache_path = out / "cache" / f"{video.name}.json"
            if cache_key is not None and masks.is_dir() and load_cache(cache_path, cache_key) is not None:
                cached += 1
                for file in sorted(masks.glob("*.png")):  # the cached masks, as they were written
                    archive.put(f"{folder}/{file.name}", file.read_bytes())
                continue
            shutil.rmtree(masks, ignore_errors=True)
            sinks: list[Sink] = [PaletteFolder(masks), archive.part(folder)]
            if overlays:
                sinks.append(OverlayVideo(out / "overlays" / f"{video.name}.mp4", warning=warning))
            count = segment_video(segmenter, video.frames, video.annotations, sinks, max_frames, quiet)
            if cache_key is not None:
                save_cache(cache_path, cache_key, {"masks": count})
    except BaseException:
        archive.close(ok=False)
        raise
    archive.close(ok=True)
    return Submission(archive.count, len(videos), cached)
