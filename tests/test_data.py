"""Training data: masks stay on their pixels through crops, warps and synthetic motion; mini-sequences come in
temporal order from one video; DAVIS, DAVIS-480p and YouTube-VOS layouts; the validation split is refused."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from llb.data import (
    AugmentConfig,
    ClipConfig,
    SyntheticClips,
    SyntheticConfig,
    VideoClips,
    check_training_root,
    preview_grid,
    scan_video_root,
)
from llb.data import davis as davis_mod
from llb.data.davis import augment_clip
from llb.data.sampler import sample_later_frames, sample_rng, start_frames, warp

SIZE = (64, 96)
RED = np.array([255, 0, 0])


def scene(rng: np.random.Generator, h: int = 120, w: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """A red ellipse (the mask) on a background whose red channel is 0."""
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 1:] = rng.integers(0, 256, (h, w, 2))
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (int(w * 0.55), int(h * 0.45)), (w // 6, h // 5), 30, 0, 360, 1, -1)
    image[mask == 1] = RED
    return image, mask


def assert_aligned(image: np.ndarray, mask: np.ndarray, colour: np.ndarray, tol: int = 40, margin: int = 2) -> None:
    """Inside the mask eroded by `margin` px the pixels have `colour`; pixels of that colour lie inside the
    mask dilated by `margin`."""
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    inner = cv2.erode(mask, kernel).astype(bool)
    outer = cv2.dilate(mask, kernel).astype(bool)
    close = np.abs(image.astype(int) - colour).max(axis=-1) <= tol
    assert inner.sum() > 20
    assert close[inner].mean() > 0.99
    assert (close & ~outer).sum() <= 0.01 * close.sum() + 2


def test_warp_keeps_mask_on_pixels() -> None:
    rng = np.random.default_rng(0)
    image, mask = scene(rng)
    matrix = np.array([[0.8, 0.3, -20.0], [-0.2, 0.9, 15.0], [2e-4, -1e-4, 1.0]])
    out, out_mask = warp(image, mask, matrix, SIZE)
    assert out.shape == (*SIZE, 3) and out_mask.shape == SIZE
    assert_aligned(out, out_mask, RED)
    small, small_mask = warp(image, mask, np.diag([0.3, 0.3, 1.0]), SIZE)  # the area pre-shrink path
    assert_aligned(small, small_mask, RED, tol=60)


def test_augmented_clip_keeps_masks_aligned() -> None:
    rng = np.random.default_rng(1)
    frames, masks = zip(*(scene(rng) for _ in range(4)), strict=True)
    cfg = ClipConfig(size=SIZE, augment=AugmentConfig(p_gray=0.0, brightness=0.0, rotation=15, scale=0.2))
    for seed in range(6):
        images, out_masks = augment_clip(sample_rng(seed, 0), frames, masks, cfg)
        assert images.shape == (4, *SIZE, 3) and images.dtype == np.uint8
        for image, mask in zip(images, out_masks, strict=True):
            assert_aligned(image, mask, RED)


def write_static_set(root: Path, count: int = 12) -> list[np.ndarray]:
    """Still images, each with one object of its own saturated colour on a dull background."""
    rng = np.random.default_rng(2)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    colours = []
    for i in range(count):
        h, w = rng.integers(90, 140), rng.integers(110, 170)
        image = rng.integers(60, 110, (h, w, 3)).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        centre = (int(rng.integers(w // 3, 2 * w // 3)), int(rng.integers(h // 3, 2 * h // 3)))
        cv2.ellipse(mask, centre, (w // 4, h // 4), float(rng.uniform(0, 180)), 0, 360, 255, -1)
        colour = np.array([255 * (i % 2), 255 * ((i // 2) % 2), 255 * ((i // 4) % 2 or i == 0)])
        colour[(i % 3)] = 40 + 20 * (i // 3)
        image[mask > 0] = colour
        colours.append(colour)
        Image.fromarray(image).save(root / "images" / f"s{i}.jpg", quality=100, subsampling=0)
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
    (root / "pairs.txt").write_text("".join(f"s{i}\n" for i in range(count)))
    return colours


def test_synthetic_scenes_keep_every_label_on_its_object(tmp_path: Path) -> None:
    colours = write_static_set(tmp_path / "stills")
    cfg = SyntheticConfig(
        size=SIZE, brightness=0, contrast=0, saturation=0, frame_brightness=0, augment=AugmentConfig(p_gray=0)
    )
    clips = SyntheticClips([tmp_path / "stills"], cfg=cfg, seed=0)
    kernel = np.ones((7, 7), np.uint8)
    for n in range(6):
        images, labels = clips.render_scene(sample_rng(0, n))
        assert images.shape == (4, *SIZE, 3) and labels.shape == (4, *SIZE)
        for image, lab in zip(images, labels, strict=True):
            by_colour: dict[int, np.ndarray] = {}
            for obj in np.unique(lab[lab > 0]):
                mask = (lab == obj).astype(np.uint8)
                inner = cv2.erode(mask, kernel).astype(bool)
                if inner.sum() <= 20:
                    continue  # (nearly) hidden behind a pasted object
                pixels = image[inner].astype(int)
                k = min(range(len(colours)), key=lambda i: np.abs(pixels - colours[i]).max(axis=1).mean())
                by_colour[k] = by_colour.get(k, 0) | mask
            for k, mask in by_colour.items():  # objects cut from the same image share a colour
                assert_aligned(image, mask, colours[k], margin=3)  # upscaled cut-outs have soft edges
        clip = clips[n]
        masks = clip["masks"][:, 0].numpy()
        assert set(np.unique(masks)) <= {0, 1} and masks[0].mean() >= cfg.min_area


def write_video_root(root: Path, sequences: dict[str, int], annotate_every: int = 1, late: int | None = None) -> None:
    """DAVIS-layout videos: frame t of each video holds an object that moves right; object 2 appears at `late`."""
    for name, length in sequences.items():
        (root / "JPEGImages" / name).mkdir(parents=True)
        (root / "Annotations" / name).mkdir(parents=True)
        for t in range(length):
            image = np.full((48, 64, 3), 90, np.uint8)
            labels = np.zeros((48, 64), np.uint8)
            labels[10:30, 5 + 2 * t : 20 + 2 * t] = 1
            if late is not None and t >= late:
                labels[32:44, 40:60] = 2
            image[labels > 0] = 200
            Image.fromarray(image).save(root / "JPEGImages" / name / f"{t:05d}.jpg")
            if t % annotate_every == 0:
                ann = Image.fromarray(labels, mode="P")
                ann.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
                ann.save(root / "Annotations" / name / f"{t:05d}.png")


def record_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    reads: list[Path] = []
    original = davis_mod.read_rgb

    def spy(path: Path) -> np.ndarray:
        reads.append(Path(path))
        return original(path)

    monkeypatch.setattr(davis_mod, "read_rgb", spy)
    return reads


def test_frame_sampling_is_ordered_and_within_the_gap() -> None:
    annotated = list(range(0, 40, 2))
    assert start_frames(annotated, 1) == []
    assert start_frames(annotated, 2) == annotated[:-1]
    assert start_frames(annotated, 6, later=3) == annotated[:-3]
    assert start_frames([0, 5, 7], 6, later=3) == [0, 5]  # too short for 3 later frames: at least one
    for seed in range(20):
        rng = sample_rng(seed, 0)
        later = sample_later_frames(rng, annotated, 10, 3, 8)
        assert later == sorted(later) and len(set(later)) == 3
        assert all(10 < f <= 18 and f in annotated for f in later)
    assert sample_later_frames(sample_rng(0, 0), annotated, 36, 3, 8) == [38, 38, 38]  # too few: repeats


def test_video_clips_come_in_order_from_one_video(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_video_root(tmp_path / "davis", {"one": 14, "two": 12, "blackswan": 5})
    assert [s.name for s in scan_video_root(tmp_path / "davis")] == ["one", "two"]  # DAVIS 2017 val dropped
    held = VideoClips([tmp_path / "davis"], ClipConfig(size=SIZE), exclude=["two"])  # a run's held-out sequences
    assert [s.name for s in held.sequences] == ["one"]
    reads = record_reads(monkeypatch)
    cfg = ClipConfig(size=SIZE, max_gap=6, augment=AugmentConfig(rotation=0, scale=0, p_flip=0, brightness=0))
    clips = VideoClips([tmp_path / "davis"], cfg, seed=3)
    for n in range(10):
        reads.clear()
        clip = clips[n]
        assert clip["images"].shape == (4, 3, *SIZE) and clip["masks"].shape == (4, 1, *SIZE)
        assert clip["masks"][0].sum() > 0
        assert len({p.parent for p in reads}) == 1
        numbers = [int(p.stem) for p in reads]
        assert numbers == sorted(numbers) and len(set(numbers)) == 4 and numbers[-1] - numbers[0] <= 6
        xs = [float(np.nonzero(m[0].numpy())[1].mean()) for m in clip["masks"]]  # the object moves right
        assert xs == sorted(xs)


def test_davis_480p_and_youtube_layouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_video_root(tmp_path / "tmp480", {"seq": 6})
    for sub in ("JPEGImages", "Annotations"):
        (tmp_path / "d480" / sub).mkdir(parents=True)
        (tmp_path / "tmp480" / sub).rename(tmp_path / "d480" / sub / "480p")
    assert len(scan_video_root(tmp_path / "d480")[0].annotations) == 6

    write_video_root(tmp_path / "yt" / "train", {"vid": 20}, annotate_every=5, late=10)
    (seq,) = scan_video_root(tmp_path / "yt")
    assert seq.annotated == [0, 5, 10, 15] and len(seq.frames) == 20
    reads = record_reads(monkeypatch)
    cfg = ClipConfig(size=SIZE, max_gap=100, min_area=0.01)
    clips = VideoClips([tmp_path / "yt"], cfg, seed=0)
    for n in range(8):
        reads.clear()
        assert clips[n]["masks"][0].sum() > 0  # the target is visible where the clip starts
        assert all(int(p.stem) % 5 == 0 for p in reads)  # only annotated frames are used


def test_validation_split_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="validation split"):
        check_training_root(tmp_path / "data" / "davis2017-dev")
    link = tmp_path / "innocent"
    (tmp_path / "davis2017-dev").mkdir()
    link.symlink_to(tmp_path / "davis2017-dev")
    with pytest.raises(ValueError, match="validation split"):
        VideoClips([link])


def test_shared_data_clips_and_preview(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="validation split"):
        VideoClips([data_dir / "davis2017-dev"])
    videos = VideoClips([data_dir / "davis2016-train-240p"], ClipConfig(size=SIZE), seed=0)
    assert len(videos.sequences) == 30
    synthetic = SyntheticClips(
        [data_dir / "static"], [data_dir / "davis2016-train-240p"], SyntheticConfig(size=SIZE), seed=0
    )
    assert len(synthetic.images) == 4182
    clips = [videos[0], videos[1], synthetic[0], synthetic[1]]
    for clip in clips:
        assert clip["images"].shape == (4, 3, *SIZE) and clip["masks"][0].sum() > 0
    grid = preview_grid(clips, tmp_path / "grid.png")
    assert grid.shape == (4 * (SIZE[0] + 4), 4 * (SIZE[1] + 4), 3)
    assert cv2.imread(str(tmp_path / "grid.png")).shape == grid.shape
