"""The DAVIS measures: hand-made masks with known answers, the official per-frame numbers, and vos-benchmark."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from llb.evaluation.metrics import (
    boundary_radius,
    disk,
    f_measure,
    frame_scores,
    jaccard,
    seg2bmap,
    statistics,
)

H, W = 480, 854  # DAVIS 480p: radius ceil(0.008 * 979.6) = 8


def square(y: int, x: int, size: int, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y : y + size, x : x + size] = True
    return mask


def random_masks(rng: np.random.Generator, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs of blobby masks of random sizes: smoothed noise thresholded, some touching the borders, some empty."""
    pairs = []
    for _ in range(count):
        h, w = int(rng.integers(20, 200)), int(rng.integers(20, 300))
        noise = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), float(rng.uniform(1, 6)))
        gt = noise > np.quantile(noise, rng.uniform(0.3, 0.95))
        shift = rng.integers(-6, 7, size=2)
        pred = np.roll(gt, tuple(shift), axis=(0, 1)) ^ (rng.random((h, w)) < 0.01)
        choice = rng.integers(10)
        if choice == 0:
            pred[:] = False
        elif choice == 1:
            gt[:] = False
        pairs.append((gt, pred))
    return pairs


def test_identical_masks() -> None:
    mask = square(100, 200, 50)
    assert jaccard(mask, mask) == 1.0
    assert f_measure(mask, mask) == 1.0


def test_disjoint_masks() -> None:
    a, b = square(10, 10, 40), square(300, 600, 40)  # far beyond the 8-pixel tolerance
    assert jaccard(a, b) == 0.0
    assert f_measure(a, b) == 0.0


def test_one_pixel_shift() -> None:
    """A 50x50 square moved by one pixel: J = 50*49 / (50*51); every boundary pixel lies within tolerance, F = 1."""
    a, b = square(100, 200, 50), square(100, 201, 50)
    assert jaccard(a, b) == pytest.approx(49 / 51)
    assert f_measure(a, b) == 1.0


def test_shift_beyond_tolerance() -> None:
    """Moved by 20 pixels (> 8): only the boundary parts that overlap within 8 pixels match."""
    a, b = square(100, 200, 100), square(100, 220, 100)
    f = f_measure(a, b)
    assert 0.0 < f < 1.0


def test_empty_masks() -> None:
    """As the official code: empty and empty is J = F = 1; empty against an object is 0 either way round."""
    empty, mask = np.zeros((H, W), dtype=bool), square(100, 200, 50)
    assert jaccard(empty, empty) == 1.0
    assert f_measure(empty, empty) == 1.0
    assert jaccard(mask, empty) == jaccard(empty, mask) == 0.0
    assert f_measure(mask, empty) == f_measure(empty, mask) == 0.0


def test_boundary_map_rule() -> None:
    """seg2bmap marks the pixels whose east, south or south-east neighbour differs (half a pixel up-left)."""
    mask = np.zeros((6, 6), dtype=bool)
    mask[2:4, 2:4] = True
    expected = np.zeros((6, 6), dtype=bool)
    expected[1:4, 1:4] = True
    expected[2, 2] = False  # all of its east, south and south-east neighbours are inside
    assert (seg2bmap(mask) == expected).all()
    assert not seg2bmap(np.ones((5, 5), dtype=bool)).any()  # the frame border is not a boundary


def test_radius_and_disk() -> None:
    assert boundary_radius((480, 854)) == 8
    assert boundary_radius((480, 854), 3) == 3
    kernel = disk(2)
    assert kernel.tolist() == [
        [0, 0, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
        [0, 1, 1, 1, 0],
        [0, 0, 1, 0, 0],
    ]


def official_statistics(values: np.ndarray) -> tuple[float, float, float]:
    """davis2017-evaluation's `db_statistics`, transcribed (uint8 indices and all)."""
    ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.uint8)
    bins = [values[ids[i] : ids[i + 1] + 1] for i in range(4)]
    return np.nanmean(values), np.nanmean(values > 0.5), np.nanmean(bins[0]) - np.nanmean(bins[3])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 48, 102, 255])
def test_statistics_as_official(n: int) -> None:
    values = np.random.default_rng(n).random(n)
    got = statistics(values)
    assert (got.mean, got.recall, got.decay) == pytest.approx(official_statistics(values), abs=1e-12)


def test_statistics_known_values() -> None:
    """A linear fall from 1 to 0 over 9 frames: bins are frames 0-2 and 6-8, decay = 0.875 - 0.125."""
    got = statistics(np.linspace(1, 0, 9))
    assert got.mean == pytest.approx(0.5)
    assert got.recall == pytest.approx(4 / 9)
    assert got.decay == pytest.approx(0.75)


def test_frame_scores_per_object() -> None:
    gt = np.zeros((H, W), dtype=np.uint8)
    gt[square(10, 10, 40)] = 1
    gt[square(200, 300, 60)] = 2
    pred = gt.copy()
    pred[pred == 2] = 0
    j, f = frame_scores(gt, pred, [1, 2, 3])
    assert j.tolist() == [1.0, 0.0, 1.0]  # object 3 is absent from both: J = F = 1
    assert f.tolist() == [1.0, 0.0, 1.0]


def test_f_under_10ms_at_480p(data_dir: Path) -> None:
    seq = data_dir / "davis2017-dev"
    gt = np.array(Image.open(seq / "Annotations" / "blackswan" / "00010.png")) == 1
    pred = np.array(Image.open(seq / "osvos" / "blackswan" / "00010.png")) == 1
    timings = []
    for _ in range(20):
        start = time.perf_counter()
        f_measure(gt, pred)
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.010


def official_rows(data_dir: Path) -> list[dict[str, str]]:
    with (data_dir / "davis2017-dev" / "osvos" / "official_per_frame_J_F.csv").open() as fh:
        return list(csv.DictReader(fh))


def frame_pair(data_dir: Path, seq: str, frame: str) -> tuple[np.ndarray, np.ndarray]:
    root = data_dir / "davis2017-dev"
    gt = np.array(Image.open(root / "Annotations" / seq / f"{frame}.png"))
    gt[gt == 255] = 0
    return gt, np.array(Image.open(root / "osvos" / seq / f"{frame}.png"))


def test_official_per_frame_numbers(data_dir: Path) -> None:
    """J and F of OSVOS on 189 frames equal the official evaluation's (printed with 6 decimals)."""
    rows = official_rows(data_dir)
    assert len(rows) == 189
    worst = 0.0
    for row in rows:
        gt, pred = frame_pair(data_dir, row["sequence"], row["frame"])
        j, f = frame_scores(gt, pred, [int(row["object_id"])])
        worst = max(worst, abs(j[0] - float(row["J"])), abs(f[0] - float(row["F"])))
    assert worst < 1e-6


def test_vos_benchmark_per_frame(data_dir: Path) -> None:
    """The same frames through vos-benchmark's evaluator: identical to the last bit."""
    evaluator_module = pytest.importorskip("vos_benchmark.evaluator")
    for row in official_rows(data_dir):
        gt, pred = frame_pair(data_dir, row["sequence"], row["frame"])
        obj = int(row["object_id"])
        oracle = evaluator_module.Evaluator()
        oracle.feed_frame(pred, gt)
        j, f = frame_scores(gt, pred, [obj])
        assert j[0] == oracle.object_iou[obj][0]
        assert f[0] == oracle.boundary_f[obj][0]


def test_vos_benchmark_random_masks() -> None:
    """Random shapes, sizes, shifts, border contact and empty masks: boundary map and F equal the oracle's."""
    utils = pytest.importorskip("vos_benchmark.utils")
    evaluator_module = pytest.importorskip("vos_benchmark.evaluator")
    for gt, pred in random_masks(np.random.default_rng(0), 200):
        assert (seg2bmap(gt) == utils._seg2bmap(gt.copy())).all()
        if not (gt.any() or pred.any()):
            continue  # the oracle only scores objects it has seen
        oracle = evaluator_module.Evaluator()
        oracle.feed_frame(pred.astype(np.uint8), gt.astype(np.uint8))
        assert jaccard(gt, pred) == oracle.object_iou[1][0]
        assert f_measure(gt, pred) == oracle.boundary_f[1][0]
