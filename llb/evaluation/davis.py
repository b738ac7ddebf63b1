"""DAVIS J&F of the engine, or of any method's saved masks, scored as the official DAVIS 2017 tool does (`llb eval`).

Protocol (davis2017-evaluation, semi-supervised): a sequence's objects are 1..K, K the largest id of its first
annotation (void 255 counts as background); every annotated frame but the first and the last is scored per
object; each object gets the mean, recall and decay of J and F over those frames; the global J and F are means
over all objects of all sequences (a sequence with three objects weighs three times), and J&F is their mean.
A prediction holding an id above K is refused, as the official tool refuses it.

The engine's masks are written as palette PNGs and then scored from those files, so the printed numbers are
the numbers of the saved folder. Finished sequences are cached with the settings that made them: an
interrupted run resumes where it stopped, and a run with another checkpoint or size recomputes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from llb.data.layout import DavisSequence, Layout, label_files, read_labels, read_names
from llb.evaluation.metrics import Statistics, frame_scores, statistics
from llb.inference.session import Segmenter
from llb.video.export import Exporter, OverlayVideo, PaletteFolder, Sink
from llb.video.io import iter_frames, probe
from llb.video.masks import VOID, davis_palette, load_mask

MEASURES = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


def davis_sequences(root: str | os.PathLike[str], split: str | None = None) -> list[DavisSequence]:
    """The sequences of a DAVIS root (JPEGImages/[480p/]<seq>, Annotations/[480p/]<seq>, ImageSets/*.txt).

    `split` is a list file or a name under ImageSets (default: `val` where listed, else every sequence).
    """
    layout = Layout.find(root)
    if split is not None and Path(split).is_file():
        listing: Path | None = Path(split)
    else:
        listing = layout.split_file(split or "val")
        if listing is None and split is not None:
            raise FileNotFoundError(
                f"no split {split!r}: neither a file nor ImageSets/{split}.txt under {root}; pass --split FILE "
                "(one sequence name a line) or leave --split out to evaluate every sequence"
            )
    sequences = layout.sequences(None if listing is None else read_names(listing))
    if not sequences:
        raise ValueError(f"no sequences to evaluate under {root}")
    return sequences


def read_indexed(path: Path) -> np.ndarray:
    """The index map of a predicted mask PNG as the official tool reads it (palette indices or grey values)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: every annotated frame needs a predicted mask of the same name")
    return read_labels(path, "indexed")


@dataclass
class SequenceScores:
    """Per-frame J and F, (K, T) each, of a sequence's objects on its annotated frames (first and last included;
    the statistics leave them out)."""

    name: str
    frames: list[str]
    objects: list[int]
    j: np.ndarray
    f: np.ndarray

    def object_stats(self) -> dict[int, tuple[Statistics, Statistics]]:
        """(J, F) statistics per object over the scored frames (all but the first and the last)."""
        return {obj: (statistics(self.j[k, 1:-1]), statistics(self.f[k, 1:-1])) for k, obj in enumerate(self.objects)}

    def to_json(self) -> dict[str, Any]:
        return {"frames": self.frames, "objects": self.objects, "J": self.j.tolist(), "F": self.f.tolist()}

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> SequenceScores:
        return cls(name, list(data["frames"]), list(data["objects"]), np.array(data["J"]), np.array(data["F"]))


def _annotated(seq: DavisSequence, max_frames: int | None) -> list[Path]:
    """The sequence's annotation files in name order, those of its first `max_frames` frames with the option."""
    files = label_files(seq.annotations)
    if max_frames is not None:
        keep = set(probe(seq.frames).frame_names[:max_frames])
        files = [p for p in files if p.stem in keep]
    if len(files) < 3:
        raise ValueError(
            f"{seq.name}: {len(files)} annotated frame(s) to score; the first and the last are not scored, so at "
            "least 3 are needed (raise --max-frames)"
        )
    return files


def score_sequence(seq: DavisSequence, predictions: Path, max_frames: int | None = None) -> SequenceScores:
    """J and F per object and annotated frame of the masks `predictions/<frame>.png` against the ground truth."""
    files = _annotated(seq, max_frames)
    first = read_labels(files[0], "indexed")
    first[first == VOID] = 0
    count = int(first.max())
    if count == 0:
        raise ValueError(f"{seq.name}: the first annotation {files[0]} marks no object")
    objects = list(range(1, count + 1))
    j = np.empty((count, len(files)))
    f = np.empty((count, len(files)))
    for t, gt_path in enumerate(files):
        gt = read_labels(gt_path, "indexed")
        gt[gt == VOID] = 0
        pred = read_indexed(predictions / gt_path.name)
        if pred.shape != gt.shape:
            raise ValueError(
                f"{predictions / gt_path.name} is {pred.shape[1]}x{pred.shape[0]} but the ground truth is "
                f"{gt.shape[1]}x{gt.shape[0]}; masks must have the annotations' resolution"
            )
        if int(pred.max()) > count:
            raise ValueError(
                f"{predictions / gt_path.name} holds index {int(pred.max())} but {seq.name} has {count} object(s); "
                "the official tool refuses such masks"
            )
        j[:, t], f[:, t] = frame_scores(gt, pred, objects)
    return SequenceScores(seq.name, [p.stem for p in files], objects, j, f)


def _row(stats: list[tuple[Statistics, Statistics]]) -> dict[str, float]:
    """The table's measures in percent, each the mean over the given objects' (J, F) statistics."""
    jm, jr, jd, fm, fr, fd = (
        100 * float(np.mean([getattr(s[i], attr) for s in stats]))
        for i in (0, 1)
        for attr in ("mean", "recall", "decay")
    )
    return dict(zip(MEASURES, ((jm + fm) / 2, jm, jr, jd, fm, fr, fd)))


def summarize(scores: list[SequenceScores]) -> dict[str, Any]:
    """results.json's content: global measures over all objects, then per sequence and per object (percent)."""
    everything, sequences = [], {}
    for seq in scores:
        per_object = seq.object_stats()
        everything.extend(per_object.values())
        sequences[seq.name] = {
            **_row(list(per_object.values())),
            "objects": {str(obj): _row([s]) for obj, s in per_object.items()},
        }
    total = _row(everything)
    return {
        "J&F": total["J&F-Mean"],
        "J": total["J-Mean"],
        "F": total["F-Mean"],
        "global": total,
        "num_objects": len(everything),
        "sequences": sequences,
    }


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows([[f"{v:.4f}" if isinstance(v, float) else v for v in row] for row in rows])


def write_tables(out: Path, summary: dict[str, Any]) -> None:
    """per-sequence.csv (with a final "Global" row over all objects) and per-object.csv, in percent."""
    seq_rows = [[name, len(s["objects"]), *(s[m] for m in MEASURES)] for name, s in summary["sequences"].items()]
    seq_rows.append(["Global", summary["num_objects"], *(summary["global"][m] for m in MEASURES)])
    _write_csv(out / "per-sequence.csv", ["Sequence", "Objects", *MEASURES], seq_rows)
    obj_rows = [
        [name, int(obj), *(row[m] for m in MEASURES)]
        for name, s in summary["sequences"].items()
        for obj, row in s["objects"].items()
    ]
    _write_csv(out / "per-object.csv", ["Sequence", "Object", *MEASURES], obj_rows)


def _write_atomic(path: Path, text: str) -> None:
    """Write a file under a temporary name and rename it, so that a killed run never leaves half a file."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def _file_identity(path: Path) -> dict[str, Any]:
    """Size and modification time of a checkpoint (or of its shard index): enough to notice a new one."""
    index = path.with_name(path.name + ".index.json")
    stat = (path if path.exists() else index).stat()
    return {"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def fingerprint(seg: Segmenter, checkpoint: str | None, max_frames: int | None) -> str:
    """A digest of everything that decides the masks, so that the cache is used only for the same run."""
    settings = {
        "model": seg.model.cfg.to_json(),
        "trained": seg.trained,
        "checkpoint": _file_identity(Path(checkpoint)) if checkpoint else "default",
        "inference": repr(seg.cfg),
        "device": seg.device.type,
        "max_frames": max_frames,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def load_cache(path: Path, key: str) -> dict[str, Any] | None:
    """A cache entry written with the same fingerprint, or None (absent, unreadable or of other settings)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("fingerprint") == key else None


def save_cache(path: Path, key: str, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, json.dumps({"fingerprint": key, **data}))


def segment_sequence(
    seg: Segmenter,
    seq: DavisSequence,
    out: Path,
    max_frames: int | None = None,
    quiet: bool = False,
    overlay: Path | None = None,
    warning: str | None = None,
) -> int:
    """Track the objects of the first annotation through the sequence; palette PNGs to `out/<frame>.png` and,
    with `overlay`, an H.264 overlay there (stamped with `warning`), written as the frames stream.

    Returns the number of masks written. `out` is emptied first so that no mask of an earlier run stays.
    """
    first = label_files(seq.annotations)[0]
    names = probe(seq.frames).frame_names
    if first.stem not in names:
        raise FileNotFoundError(f"{seq.name}: the first annotation {first.name} has no frame in {seq.frames}")
    shutil.rmtree(out, ignore_errors=True)
    session = seg.start(seq.frames)
    session.add_mask(names.index(first.stem), load_mask(first))
    stop = len(names) if max_frames is None else min(max_frames, len(names))
    sinks: list[Sink] = [PaletteFolder(out)] + ([OverlayVideo(overlay, warning=warning)] if overlay else [])
    results = tqdm(session.propagate(stop=stop), total=stop, desc=seq.name, unit="frame", leave=False, disable=quiet)
    with Exporter(sinks) as exporter:
        for result in results:
            exporter.write(result.frame, result.labels, result.name)
    return exporter.frames


def write_overlay(frames: Path, masks: Path, path: Path, warning: str | None = None) -> int:
    """An H.264 overlay of saved masks (predictions, or a cached run) on their frames, through the exporter;
    frames without a mask are left out. Returns the frames written."""
    names = probe(frames).frame_names
    with Exporter([OverlayVideo(path, warning=warning)]) as exporter:
        for name, frame in zip(names, iter_frames(frames)):
            if (masks / f"{name}.png").exists():
                exporter.write(frame, read_indexed(masks / f"{name}.png"), name)
    return exporter.frames


def _tick_step(span: int, most: int = 12) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... frames that puts at most `most` ticks on the axis."""
    scale = 1
    while True:
        for mantissa in (1, 2, 5):
            if span / (mantissa * scale) <= most:
                return mantissa * scale
        scale *= 10


def plot_iou(scores: SequenceScores, path: Path) -> None:
    """A line chart (PNG, drawn with OpenCV) of each object's J per annotated frame, to see where tracking
    drifts; the first and the last frame, which the benchmark does not score, are shaded."""
    width, height = 960, 360
    left, right, top, bottom = 56, 16, 40, 44
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    font, grey, black = cv2.FONT_HERSHEY_SIMPLEX, (200, 200, 200), (0, 0, 0)
    n = len(scores.frames)
    span = max(n - 1, 1)

    def x_at(t: float) -> int:
        return round(left + (width - left - right) * t / span)

    def y_at(v: float) -> int:
        return round(height - bottom - (height - top - bottom) * v)

    half = (x_at(1) - x_at(0)) // 2
    for edge in (0, n - 1):
        cv2.rectangle(canvas, (x_at(edge) - half, top), (x_at(edge) + half, height - bottom), (235, 235, 235), -1)
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        cv2.line(canvas, (left, y_at(v)), (width - right, y_at(v)), grey, 1)
        cv2.putText(canvas, f"{v:.2f}", (8, y_at(v) + 4), font, 0.4, black, 1, cv2.LINE_AA)
    for t in range(0, n, _tick_step(span)):
        cv2.line(canvas, (x_at(t), height - bottom), (x_at(t), height - bottom + 4), black, 1)
        cv2.putText(canvas, str(t), (x_at(t) - 8, height - bottom + 18), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.putText(canvas, "frame", (width // 2 - 20, height - 8), font, 0.45, black, 1, cv2.LINE_AA)
    stats = scores.object_stats()
    palette = davis_palette()
    for k, obj in enumerate(scores.objects):
        colour = tuple(int(c) for c in palette[obj][::-1])  # RGB palette -> OpenCV's BGR
        points = np.array([(x_at(t), y_at(v)) for t, v in enumerate(scores.j[k])], dtype=np.int32)
        cv2.polylines(canvas, [points], False, colour, 2, cv2.LINE_AA)
        label = f"object {obj}: J {100 * stats[obj][0].mean:.1f}"
        cv2.putText(canvas, label, (width - right - 190, top + 16 + 18 * k), font, 0.45, colour, 1, cv2.LINE_AA)
    title = f"{scores.name}: J (IoU) per annotated frame; shaded frames are not scored"
    cv2.putText(canvas, title, (left, 24), font, 0.55, black, 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), canvas):
        raise OSError(f"could not write {path}")


@dataclass
class DavisEvaluation:
    """What `evaluate_davis` measured: results.json's summary (`summarize`), the per-frame scores of each
    sequence, and how many sequences came from the cache."""

    summary: dict[str, Any]
    scores: list[SequenceScores]
    cached: int = 0


def evaluate_davis(
    segmenter: Segmenter | None,
    sequences: Sequence[DavisSequence],
    out: str | os.PathLike[str],
    *,
    predictions: str | os.PathLike[str] | None = None,
    max_frames: int | None = None,
    cache_key: str | None = None,
    overlays: bool = False,
    plots: bool = False,
    warning: str | None = None,
    quiet: bool = True,
) -> DavisEvaluation:
    """DAVIS J&F of `sequences`: tracked by `segmenter` (masks to `out/masks/<seq>/`), or, with `segmenter`
    None, of the saved masks `predictions/<seq>/<frame>.png`. Writes results.json, per-sequence.csv and
    per-object.csv to `out`; with `overlays` an H.264 overlay per sequence to `out/overlays/`, with `plots` a
    per-frame J chart to `out/plots/`.

    With a `cache_key` (`fingerprint` of the run's settings) each finished sequence is cached in `out/cache/`
    and a later call with the same key reuses it instead of tracking again. `warning` (an untrained network)
    is stamped on the overlays and stored in results.json.
    """
    if segmenter is None and predictions is None:
        raise ValueError("evaluate_davis needs a segmenter to track with or a folder of predictions to score")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scores, cached = [], 0
    for seq in tqdm(sequences, desc="DAVIS", unit="seq", disable=quiet):
        entry: dict[str, Any] | None = None
        video = out / "overlays" / f"{seq.name}.mp4"
        if segmenter is None:
            mask_dir = Path(predictions) / seq.name
            if not mask_dir.is_dir():
                raise FileNotFoundError(f"{mask_dir} is missing: the predictions need a folder per sequence")
            result = score_sequence(seq, mask_dir, max_frames)
        else:
            mask_dir = out / "masks" / seq.name
            cache_path = out / "cache" / f"{seq.name}.json"
            if cache_key is not None and mask_dir.is_dir():
                entry = load_cache(cache_path, cache_key)
            if entry is None:
                segment_sequence(segmenter, seq, mask_dir, max_frames, quiet, video if overlays else None, warning)
                result = score_sequence(seq, mask_dir, max_frames)
                if cache_key is not None:
                    save_cache(cache_path, cache_key, result.to_json())
            else:
                result = SequenceScores.from_json(seq.name, entry)
                cached += 1
        scores.append(result)
        if overlays and (segmenter is None or (entry is not None and not video.exists())):
            write_overlay(seq.frames, mask_dir, video, warning)  # saved masks: predictions or the cache
        if plots:
            plot_iou(result, out / "plots" / f"{seq.name}.png")
    summary = summarize(scores)
    results = {
        **summary,
        "protocol": "DAVIS 2017 semi-supervised (official davis2017-evaluation): percent, per object over "
        "the annotated frames without the first and the last, global = mean over objects",
        "predictions": str(Path(predictions).resolve()) if segmenter is None else str((out / "masks").resolve()),
        "max_frames": max_frames,
    }
    if warning:
        results["warning"] = warning
    _write_atomic(out / "results.json", json.dumps(results, indent=1))
    write_tables(out, summary)
    return DavisEvaluation(summary, scores, cached)
